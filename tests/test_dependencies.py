"""The dependency rule of ARCHITECTURE.md, held by a test: the library never imports data preparation or the
launchers (it must be usable without OCR tooling, Faker or the scripts), and the model never imports training."""

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
    for name in ("layoutlmv3-pretrain", "layoutlmv3-convert", "layoutlmv3-finetune", "layoutlmv3-build-shards"):
        assert f'"{name} = ' in declared
        assert (scripts / name).is_file(), f"{name} is not installed: run `pip install -e .` (make venv does)"
    done = subprocess.run([str(scripts / "layoutlmv3-build-shards"), "--help"], capture_output=True, env=env)
    assert done.returncode == 0 and b"--ocr" in done.stdout
