"""Round-3 attacks on the atomic writer (`layoutlmv3.atomic_files`) and on the page processor's call, the predictors
and the tokenizer's transformers-style call: each test is a hostile input or state that must be handled or refused
with a clear error (bounded in time and memory), never a silent loss or an unreadable crash."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
from pathlib import Path

import pytest

from layoutlmv3.atomic_files import (
    directory_in_place,
    remove_dead_temporaries_of,
    remove_temporaries_of,
    write_bytes,
)

HOST = socket.gethostname()


def test_the_clean_up_deletes_only_names_a_writer_makes(tmp_path: Path) -> None:
    """A user's hidden ``.NAME.backup.tmp`` (an editor's or a script's) is not a temporary: only
    ``.NAME.HOST.PID[-TOKEN].tmp`` is, so the locked clean-up deletes that one and keeps the user's."""
    target = tmp_path / "manifest.jsonl"
    users = [tmp_path / ".manifest.jsonl.backup.tmp", tmp_path / ".manifest.jsonl.old-copy.tmp"]
    for path in users:
        path.write_text("mine")
    killed = tmp_path / f".manifest.jsonl.{HOST}.123-0a1b2c3d.tmp"
    killed.write_text("half")
    assert remove_temporaries_of([target]) == [killed]
    assert all(path.read_text() == "mine" for path in users)


def test_a_name_with_a_pid_no_host_can_hold_is_left_not_a_crash(tmp_path: Path) -> None:
    """``.NAME.HOST.99999999999999999999.tmp`` (no process has that id) made the dead-writer clean-up raise
    OverflowError from os.kill: the writer's run died on a stranger's file name. It is kept, not judged."""
    odd = tmp_path / f".words.json.{HOST}.99999999999999999999.tmp"
    odd.write_text("x")
    assert remove_dead_temporaries_of([tmp_path / "words.json"]) == []
    assert odd.exists()


def test_a_folder_swap_refuses_to_replace_a_file(tmp_path: Path) -> None:
    """A file where the folder goes (a user's, a mistaken --out) was silently deleted and a folder put there."""
    target = tmp_path / "best"
    target.write_text("user's notes")
    with pytest.raises(NotADirectoryError, match="best"), directory_in_place(target) as staged:
        (staged / "weights").write_text("new")
    assert target.read_text() == "user's notes"
    assert sorted(os.listdir(tmp_path)) == ["best"]


def test_a_folder_swap_through_a_link_keeps_the_link_and_replaces_the_folder_it_names(tmp_path: Path) -> None:
    """best -> /big/disk/best: the link was replaced by a real folder on the link's disk and the linked folder kept
    its old files for ever; the link now stays and the folder it names is the new one."""
    real = tmp_path / "disk" / "best"
    real.mkdir(parents=True)
    (real / "old").write_text("old")
    link = tmp_path / "best"
    link.symlink_to(real, target_is_directory=True)
    with directory_in_place(link) as staged:
        (staged / "new").write_text("new")
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert sorted(os.listdir(real)) == ["new"]
    assert sorted(os.listdir(real.parent)) == ["best"] and sorted(os.listdir(tmp_path)) == ["best", "disk"]


@contextlib.contextmanager
def _small_disk(folder: Path, size: str = "2M"):
    folder.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    ).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path: Path) -> None:
    """ENOSPC while writing says ``[Errno 28] No space left on device`` with no file named (write() has none):
    the error now names the file the user asked for, never the hidden temporary, and no temporary is left."""
    with _small_disk(tmp_path / "disk") as disk:
        with pytest.raises(OSError) as caught:
            write_bytes(disk / "model.safetensors", b"x" * 3_000_000)
        assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(disk / "model.safetensors")
        assert os.listdir(disk) == []


def test_a_full_disk_during_a_folder_swap_keeps_the_old_folder_and_names_it(tmp_path: Path) -> None:
    with _small_disk(tmp_path / "disk") as disk:
        with directory_in_place(disk / "best") as staged:
            (staged / "w").write_bytes(b"o" * 1_200_000)
        with pytest.raises(OSError) as caught, directory_in_place(disk / "best") as staged:
            (staged / "w").write_bytes(b"n" * 1_200_000)
        assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(disk / "best")
        assert os.listdir(disk) == ["best"] and (disk / "best" / "w").read_bytes()[:1] == b"o"
