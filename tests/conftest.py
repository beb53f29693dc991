"""Shared test fixtures: locations of the optional shared datasets, seeded RNG, the pretraining world and the local
Slurm cluster (session-wide: built once for every module that uses them); a stale op build lock stops the session at
once (every DeepSpeed test would otherwise wait on it until its timeout)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# The helper modules' asserts report their values as the test modules' do.
pytest.register_assert_rewrite("tests.shard_files", "tests.slurm_cluster", "tests.hf_trainer_runs")

from layoutlmv3.training.extensions import check_build_locks  # noqa: E402
from tests.pretrain_world import build_world  # noqa: E402

# Module fixtures of the data-prep tests (a synthetic corpus and its vocabulary), each module building its own.
from tests.shard_build import corpus_dir, synth_dir, tokenizer_dir  # noqa: E402, F401
from tests.slurm_cluster import slurm_env  # noqa: E402, F401  (the session fixture: one local cluster for every Slurm test)

REPO_ROOT = Path(__file__).resolve().parents[1]
# The shared data (FUNSD, RoBERTa vocabulary) lives beside the checkout; it is never copied into the tree.
SHARED_DATA = Path(os.environ.get("LAYOUTLMV3_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


# `make test` and `make test-fast` run on two xdist workers: each computes on one thread, and so do the processes it
# starts unless a test sets its own, so that two workers do not oversubscribe two cores.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# The modules whose tests use the Slurm cluster: one cluster a session (fixed node names and addresses), one worker.
SLURM_CLUSTER_MODULES = ("tests/test_slurm.py", "tests/test_slurm_multinode.py", "tests/test_probe.py")
SLURM_SCOPE = "the Slurm cluster"
# Seconds each long scope takes under `make test` (sums of `--durations=0`, idle 2-core machine, 2026-12-07; the
# order is what counts). Workers take the longest first, so the run does not end on one worker finishing a long
# module that started last while the other waits (longest-processing-time-first scheduling); unlisted modules are
# short and follow, slow ones first.
EXPECTED_SECONDS = {
    SLURM_SCOPE: 400,
    "tests/test_pretrain_launcher.py": 380,
    "tests/test_question_answering.py": 260,
    "tests/test_pretraining_convergence.py": 235,
    "tests/test_finetune.py": 180,
    "tests/test_benchmark_scripts.py": 120,
    "tests/test_classify.py": 100,
    "tests/test_runtime_faults.py": 95,
    "tests/test_image_tokenizer.py": 75,
    "tests/test_build_shards.py": 60,
    "tests/test_checkpoint_verification.py": 40,
    "tests/test_end_to_end.py": 30,
}


def scope_of(nodeid: str) -> str:
    """The unit a worker takes whole: a module, or every module of the Slurm cluster."""
    module = nodeid.split("::", 1)[0]
    return SLURM_SCOPE if module in SLURM_CLUSTER_MODULES else module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Workers take whole modules, so a module fixture (a fine-tuning run, a trained tokenizer) is built once, and the
    Slurm cluster's modules together; modules go out in the order the workers collected them (long ones first)."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    config.option.loadscopereorder = False  # xdist would order by test count, putting a long 4-test module last
    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a worker, the longest scopes first (EXPECTED_SECONDS), then the other modules holding slow tests (order
    kept otherwise): the long runs start at once instead of ending the run on one worker while the other waits."""
    if XDIST_WORKER:
        slow = {scope_of(item.nodeid) for item in items if item.get_closest_marker("slow")}
        items.sort(
            key=lambda item: (-EXPECTED_SECONDS.get(scope_of(item.nodeid), 0), scope_of(item.nodeid) not in slow)
        )


def pytest_sessionstart(session: pytest.Session) -> None:
    try:
        check_build_locks()
    except ValueError as error:
        pytest.exit(str(error), returncode=3)


@pytest.fixture(scope="session")
def roberta_vocab_dir() -> Path:
    """Directory with the official RoBERTa/LayoutLMv3 vocab.json + merges.txt; skips when absent."""
    path = SHARED_DATA / "roberta-base"
    if not (path / "vocab.json").is_file() or not (path / "merges.txt").is_file():
        pytest.skip(f"RoBERTa vocabulary not found at {path}")
    return path


@pytest.fixture(scope="session")
def funsd_dir() -> Path:
    """The FUNSD dataset root (training_data/, testing_data/); skips when absent."""
    path = SHARED_DATA / "funsd"
    if not (path / "training_data" / "annotations").is_dir():
        pytest.skip(f"FUNSD not found at {path}")
    return path


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pretraining world (tests/pretrain_world.py) that the launcher's and the Slurm cluster's runs read."""
    return build_world(tmp_path_factory.mktemp("pretrain_world"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
