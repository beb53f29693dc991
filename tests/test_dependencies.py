"""The dependency rule of ARCHITECTURE.md, held by a test: the library never imports data preparation or the
launchers (it must be usable without OCR tooling, Faker or the scripts), the model never imports training, and the
generic trainer knows no job."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[1] / "layoutlmv3"


def _imports(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at module level or inside functions (relative: 'layoutlmv3')."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("layoutlmv3" if node.level else node.module or "")
    return names


@pytest.mark.parametrize("path", sorted(LIBRARY.rglob("*.py")), ids=lambda p: str(p.relative_to(LIBRARY)))
def test_the_library_imports_neither_data_prep_nor_launch(path: Path) -> None:
    forbidden = {name for name in _imports(path) if name.split(".")[0] in ("data_prep", "launch", "benchmarks")}
    assert not forbidden, f"{path} imports {sorted(forbidden)}: dependencies must point down the data flow"


def test_the_model_imports_nothing_of_training_data_or_pretraining() -> None:
    for path in sorted((LIBRARY / "model").rglob("*.py")):
        above = {n for n in _imports(path) if n.startswith(("layoutlmv3.training", "layoutlmv3.data", "deepspeed"))}
        assert not above, f"{path} imports {sorted(above)}"


def _resolved_imports(path: Path) -> set[str]:
    """Full dotted names of the modules `path` imports, relative imports resolved against its package."""
    package = ".".join(path.relative_to(LIBRARY.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names |= {module} if node.module else {f"{module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("path", sorted((LIBRARY / "training").rglob("*.py")), ids=lambda p: p.name)
def test_the_generic_trainer_imports_no_job(path: Path) -> None:
    jobs = {n for n in _resolved_imports(path) if n.startswith(("layoutlmv3.pretraining", "layoutlmv3.finetune"))}
    assert not jobs, f"{path} imports {sorted(jobs)}: jobs import the trainer, never the reverse"


def test_relative_imports_are_resolved_against_the_package() -> None:
    """The rule above reads relative imports right (else it would hold whatever training imports)."""
    names = _resolved_imports(LIBRARY / "pretraining" / "job.py")
    assert "layoutlmv3.pretraining.build" in names and "layoutlmv3.training.runner" in names


TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("path", sorted(TESTS.glob("*.py")), ids=lambda p: p.name)
def test_no_test_module_imports_another(path: Path) -> None:
    """Shared fixtures live in conftest.py and shared helpers in the tests' helper modules: a test module imported
    by another runs its module fixtures twice and couples two suites that should change alone."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):  # `from tests import test_x` as well as `from tests.test_x import y`
            names |= {f"{node.module or ''}.{alias.name}".lstrip(".") for alias in node.names} | {node.module or ""}
    tests = {name for name in names if name.split(".")[-1].startswith("test_") or ".test_" in name}
    assert not tests, f"{path.name} imports {sorted(tests)}: move what they share to a helper module or conftest.py"


def test_data_preparation_starts_without_torch_or_transformers() -> None:
    """Data prep runs on CPU nodes that train nothing: its commands import neither torch (3 s of start-up a
    process, and a package a prep-only node need not have) nor transformers."""
    import subprocess
    import sys

    modules = ["data_prep.build_shards", "data_prep.merge_manifests", "data_prep.file_list", "data_prep.synth"]
    probe = f"import sys; import {', '.join(modules)}; print(sorted({{'torch', 'transformers'}} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout


def test_entry_points_run_as_modules_and_console_scripts(tmp_path: Path) -> None:
    """`python -m launch.NAME` from any directory, and the console scripts setup.py declares (installed by
    `pip install -e .`, which `make venv` runs)."""
    import subprocess
    import sys

    env = {"DS_ACCELERATOR": "cpu", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "launch.convert", "--help"], cwd=tmp_path, capture_output=True, env=env
    )
    assert done.returncode == 0 and b"--checkpoint" in done.stdout
    scripts = Path(sys.executable).parent
    declared = (LIBRARY.parent / "setup.py").read_text()
    launchers = [
        path.stem for path in sorted((LIBRARY.parent / "launch").glob("*.py")) if "\ndef main(" in path.read_text()
    ]
    for stem in launchers:  # every launcher has a console script, named for what it runs (demo.py: the smoke test)
        name = "layoutlmv3-" + {"demo": "smoke"}.get(stem, stem).replace("_", "-")
        assert f'"{name} = launch.{stem}:main"' in declared, f"launch/{stem}.py has no console script {name}"
        assert (scripts / name).is_file(), f"{name} is not installed: run `pip install -e .` (make venv does)"
    done = subprocess.run([str(scripts / "layoutlmv3-build-shards"), "--help"], capture_output=True, env=env)
    assert done.returncode == 0 and b"--ocr" in done.stdout
