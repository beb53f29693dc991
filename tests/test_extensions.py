"""Build locks in torch's extension cache: a killed build's lock is an error, a fresh one a warning."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import pytest

from layoutlmv3.training.extensions import (
    announce_op_builds,
    build_locks,
    check_build_locks,
    extension_cache_dir,
    main,
    use_virtualenv_cache,
)


def _lock(root: Path, op: str, age_seconds: float, tag: str = "py311_cpu") -> Path:
    """A lock as torch lays it out: <default root>/<py+device tag>/<op>/lock, or <TORCH_EXTENSIONS_DIR>/<op>/lock."""
    lock = root / tag / op / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    then = time.time() - age_seconds
    os.utime(lock, (then, then))
    return lock


def test_no_locks_pass(tmp_path: Path) -> None:
    (tmp_path / "py311_cpu" / "fused_adam").mkdir(parents=True)
    assert build_locks(tmp_path) == []
    check_build_locks(tmp_path)


def test_a_killed_builds_lock_is_an_error_naming_the_file(tmp_path: Path) -> None:
    lock = _lock(tmp_path, "deepspeed_shm_comm", age_seconds=2 * 3600)
    [(found, age)] = build_locks(tmp_path)
    assert found == lock and age == pytest.approx(7200, abs=60)
    with pytest.raises(ValueError, match=f"stale .* build lock {lock} \\(2.0 h old\\).*'deepspeed_shm_comm'"):
        check_build_locks(tmp_path)


def test_a_build_in_progress_is_only_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _lock(tmp_path, "fused_adam", age_seconds=5)
    with caplog.at_level(logging.WARNING):
        check_build_locks(tmp_path)
    assert "build of 'fused_adam' finishes" in caplog.text


def test_cache_dir_follows_torch_extensions_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert extension_cache_dir() == tmp_path
    _lock(tmp_path, "deepspeed_shm_comm", age_seconds=3600, tag="")
    assert main(["--check-only"]) == 2


def test_without_a_setting_the_cache_is_the_virtualenvs_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new shell (no TORCH_EXTENSIONS_DIR) must reuse the ops `make venv` built, not rebuild them into the cache
    every checkout shares; an explicit setting wins."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "")  # empty is unset; setenv (not delenv) restores what was there
    venv = tmp_path / "venv"
    monkeypatch.setattr(sys, "prefix", str(venv))
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    assert use_virtualenv_cache() == venv / "torch_extensions"
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(venv / "torch_extensions")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    assert use_virtualenv_cache() == tmp_path / "mine"


def test_outside_a_virtualenv_torch_keeps_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "")
    monkeypatch.setattr(sys, "base_prefix", sys.prefix)
    use_virtualenv_cache()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == ""


def test_an_op_about_to_be_built_is_announced_once_built_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    with caplog.at_level(logging.WARNING):
        pending = announce_op_builds(("ShareMemCommBuilder",))
    assert pending == ["deepspeed_shm_comm"]
    assert f"building DeepSpeed op deepspeed_shm_comm once into {tmp_path} (about a minute" in caplog.text
    (tmp_path / "deepspeed_shm_comm").mkdir()
    (tmp_path / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").touch()
    caplog.clear()
    assert announce_op_builds(("ShareMemCommBuilder",)) == [] and "building" not in caplog.text
