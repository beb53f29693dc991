# Two commands set everything up on a fresh machine:
#   make demo   -> virtualenv + dependencies, then the main job on the embedded synthetic default (CPU, tiny sizes)
#   make test   -> virtualenv + dependencies + system packages, then lint and the whole test suite (CPU)
# While working, `make test-fast` runs every test not marked slow (nothing that trains, launches ranks, starts the
# Slurm cluster or reruns data prep end to end): under 3 minutes on 2 cores.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
SYSTEM_PACKAGES := tesseract-ocr fonts-dejavu-core slurmctld slurmd munge slurm-client shellcheck iproute2 \
	libtesseract-dev libleptonica-dev pkg-config
export PYTHONUNBUFFERED := 1
# DeepSpeed compiles its CPU ops (shared-memory all-reduce, Adam) on first use. Keep them with the virtualenv they
# were built against, built once by `venv` below, so a fresh clone never inherits another tree's cache or a lock
# left in it by a killed build (which makes every DeepSpeed run wait forever).
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions

.PHONY: demo smoke test test-fast lint format system-deps venv ocr-engine clean

venv: $(VENV)/.ops

# The Python packages. deepspeed builds against the installed torch (no build isolation), so it comes after.
$(VENV)/.installed: requirements.txt requirements-dev.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-build-isolation deepspeed==0.19.8
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# DeepSpeed's CPU op (the shared-memory all-reduce), compiled once into the virtualenv's cache (30-60 s on 2 cores).
$(VENV)/.ops: $(VENV)/.installed
	DS_ACCELERATOR=cpu $(PY) -m layoutlmv3.training.extensions
	touch $@

# Debian packages the tests and the data pipeline use: Tesseract OCR, DejaVu fonts for the synthetic corpus, a
# real Slurm (controller, node daemons, munge) that tests start as a 3-host cluster in network namespaces (iproute2),
# shellcheck for the Slurm scripts, Tesseract's headers to build the in-process OCR engine.
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

# Tesseract kept in the process (data_prep/tesseract_engine.py): tesserocr compiled against the system's Tesseract,
# so its words are the command's (PyPI's wheel bundles another release). Optional: without it the command runs.
ocr-engine: $(VENV)/.tesserocr

$(VENV)/.tesserocr: $(VENV)/.installed | system-deps
	$(PY) -m pip install -q --no-binary tesserocr tesserocr==2.13.0
	touch $@

demo: venv system-deps
	bash launch/demo_chain.sh

# Seconds: the model on one generated page, saved in both formats and reloaded by ours and by transformers.
smoke: venv system-deps
	$(PY) launch/demo.py --out outputs/demo

lint: $(VENV)/.installed system-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	shellcheck slurm/*.sbatch slurm/*.sh slurm/local/*.sh launch/*.sh benchmarks/*.sh

# Two xdist workers, one core each, taking whole modules (the Slurm cluster's together: tests/conftest.py).
PYTEST_WORKERS := -n 2 --dist loadscope

# The set-up steps that share nothing run at once: the ops compile while tesserocr builds and lint runs.
test:
	$(MAKE) --no-print-directory -j3 venv ocr-engine lint
	$(PY) -m pytest -q $(PYTEST_WORKERS) --durations=15

test-fast:
	$(MAKE) --no-print-directory -j3 venv ocr-engine
	$(PY) -m pytest -q $(PYTEST_WORKERS) -m "not slow" --durations=10

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
