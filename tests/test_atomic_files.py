"""atomic_files: a file or folder is replaced whole or not at all, its temporaries unique to each writer."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from layoutlmv3.atomic_files import (
    directory_in_place,
    file_in_place,
    remove_dead_temporaries_of,
    remove_temporaries_of,
    target_of_temporary,
    temporary_path,
    write_bytes,
    write_text,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def _disk_full(fd: int) -> None:
    raise OSError(28, "No space left on device")


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch) -> None:
    """The caller's write raising halfway, then the disk filling up at the sync: the old file is as it was and the
    folder holds nothing else."""
    target = tmp_path / "record.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="cut short"), file_in_place(target) as temporary:
        temporary.write_text("half of the ne")
        raise RuntimeError("cut short")
    monkeypatch.setattr("layoutlmv3.atomic_files.os.fsync", _disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_text(target, "new")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_a_failed_atomic_write_leaves_neither_the_file_nor_its_temporary(tmp_path: Path, monkeypatch) -> None:
    """Disk full at the fsync (simulated): the error reaches the caller and nothing is left in the folder."""
    monkeypatch.setattr("layoutlmv3.atomic_files.os.fsync", _disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_bytes(tmp_path / "manifest.json", b"{}")
    assert list(tmp_path.iterdir()) == []


def test_the_data_and_the_rename_reach_the_disk_in_order(tmp_path: Path, monkeypatch) -> None:
    """The temporary is synced before it takes the name, and the folder after (else a crash could leave the name on
    an empty file, or bring the temporary back)."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: (events.append(("sync", os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd))
    )
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("rename", str(a))), real_replace(a, b)))
    write_bytes(tmp_path / "weights", b"tensors")
    (temporary,) = {path for kind, path in events if kind == "rename"}
    assert events == [("sync", temporary), ("rename", temporary), ("sync", str(tmp_path))]


def test_two_writers_of_one_name_never_share_a_temporary(tmp_path: Path) -> None:
    """Two threads of one process write the same file at once: each has its own temporary, and the file ends up
    whole, one writer's (a name made of host and pid alone would be shared, and one rename would fail)."""
    target = tmp_path / "latest"
    both_writing = threading.Barrier(2)
    temporaries: list[Path] = []
    failures: list[BaseException] = []

    def write(text: str) -> None:
        try:
            with file_in_place(target) as temporary:
                temporaries.append(temporary)
                temporary.write_text(text * 1000)
                both_writing.wait(timeout=10)
        except BaseException as error:  # noqa: BLE001 (reported below, on the test's thread)
            failures.append(error)

    threads = [threading.Thread(target=write, args=(text,)) for text in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert failures == [] and len(set(temporaries)) == 2
    assert target.read_text() in ("a" * 1000, "b" * 1000)
    assert list(tmp_path.iterdir()) == [target]
    assert temporary_path(target) != temporary_path(target)


def test_a_temporary_names_the_file_it_was_to_become(tmp_path: Path) -> None:
    """What an error names instead of the hidden temporary: this host's temporaries only, old (no token) or new."""
    target = tmp_path / "progress.task-1.json"
    assert target_of_temporary(temporary_path(target)) == target
    assert target_of_temporary(tmp_path / f".{target.name}.{socket.gethostname()}.42.tmp") == target
    assert target_of_temporary(tmp_path / f".{target.name}.other-host.42-0a1b2c3d.tmp") is None
    assert target_of_temporary(target) is None


def _folder(path: Path) -> dict[str, str]:
    return {file.name: file.read_text() for file in path.iterdir()}


def test_a_folder_is_swapped_in_whole_and_the_old_one_goes(tmp_path: Path) -> None:
    """The new folder replaces the old one entirely: no file of the old one stays beside the new files."""
    target = tmp_path / "best"
    with directory_in_place(target) as staged:
        (staged / "config.json").write_text("old")
        (staged / "only_in_the_old.txt").write_text("old")
    with directory_in_place(target) as staged:
        (staged / "config.json").write_text("new")
    assert _folder(target) == {"config.json": "new"}
    assert list(tmp_path.iterdir()) == [target]


def test_a_folder_whose_filling_fails_leaves_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "converted"
    target.mkdir()
    (target / "model.safetensors").write_text("old")
    with pytest.raises(OSError, match="No space"), directory_in_place(target) as staged:
        (staged / "model.safetensors").write_text("half")
        raise OSError(28, "No space left on device")
    assert _folder(target) == {"model.safetensors": "old"}
    assert list(tmp_path.iterdir()) == [target]


def test_a_folder_that_cannot_take_the_name_puts_the_old_one_back(tmp_path: Path, monkeypatch) -> None:
    """The rename of the new folder fails after the old one was set aside: the old one is back under its name."""
    target = tmp_path / "best"
    target.mkdir()
    (target / "weights").write_text("old")
    real_rename = os.rename

    def rename(source: str | Path, destination: str | Path) -> None:
        if Path(destination) == target and Path(source).name.startswith(".best.") and (Path(source) / "new").exists():
            raise OSError(5, "Input/output error")
        real_rename(source, destination)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="Input/output"), directory_in_place(target) as staged:
        (staged / "new").write_text("new")
    assert _folder(target) == {"weights": "old"}
    assert list(tmp_path.iterdir()) == [target]


KILLED_BETWEEN_THE_RENAMES = """
import os, signal, sys
from pathlib import Path
from layoutlmv3.atomic_files import directory_in_place

target = Path(sys.argv[1])
real_rename = os.rename
def rename(source, destination):
    if Path(destination) == target:  # the old folder is aside, the new one about to take the name
        os.kill(os.getpid(), signal.SIGKILL)  # a node lost: no clean-up of any kind runs
    real_rename(source, destination)
os.rename = rename
with directory_in_place(target) as staged:
    (staged / "a").write_text("new")
    (staged / "b").write_text("new")
"""


def test_a_folder_swap_killed_between_its_renames_leaves_no_mix_and_the_next_swap_clears_it(tmp_path: Path) -> None:
    """A SIGKILL with the old folder set aside and the new one not yet renamed: the name is absent (never half old,
    half new), the two folders are hidden temporaries, and the next swap removes them (a dead writer of this
    host's) and puts a whole folder in place."""
    target = tmp_path / "best"
    target.mkdir()
    (target / "a").write_text("old")
    killed = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_THE_RENAMES, str(target)], cwd=REPO_ROOT)
    assert killed.returncode == -signal.SIGKILL
    assert not target.exists()
    left = sorted(tmp_path.iterdir())
    assert len(left) == 2 and all(path.name.startswith(".best.") for path in left)
    with directory_in_place(target) as staged:
        (staged / "a").write_text("newer")
    assert _folder(target) == {"a": "newer"}
    assert list(tmp_path.iterdir()) == [target]


def test_only_the_named_files_killed_temporaries_are_removed_in_one_listing(tmp_path: Path) -> None:
    """remove_temporaries_of takes any host's and pid's temporary of the named files (a host name may hold dots)
    and nothing else: not the files, not another file's temporary, not a name that merely begins alike."""
    (tmp_path / "a.json").write_text("{}")
    stale = [
        tmp_path / ".a.json.node-1.cluster.org.77.tmp",
        tmp_path / ".b.json.h.1.tmp",
        temporary_path(tmp_path / "a.json"),
    ]
    kept = [
        tmp_path / ".a.jsonl.h.1.tmp",
        tmp_path / ".c.json.h.1.tmp",
        tmp_path / "a.json.h.1.tmp",
        tmp_path / "a.json",
    ]
    for path in stale + kept[:-1]:
        path.write_bytes(b"x")
    assert remove_temporaries_of([tmp_path / "a.json", tmp_path / "b.json", tmp_path / "missing" / "d.json"]) == sorted(
        stale
    )
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_without_a_lock_only_this_hosts_dead_writers_temporaries_are_removed(tmp_path: Path) -> None:
    """remove_dead_temporaries_of (words files beside the user's pages, written with no lock across hosts) takes a
    temporary only when its writer ran on this host and is gone: another host's may be a write in progress, and so
    may a live process's."""
    finished = subprocess.Popen(["true"])
    finished.wait()
    host = socket.gethostname()
    dead = [tmp_path / f".a.json.{host}.{finished.pid}.tmp", tmp_path / f".a.json.{host}.{finished.pid}-0a1b2c3d.tmp"]
    kept = [
        tmp_path / f".a.json.{host}.{os.getpid()}.tmp",  # alive: this very process
        temporary_path(tmp_path / "a.json"),  # alive, with its token
        tmp_path / f".a.json.{host}x.{finished.pid}.tmp",  # another host whose name begins alike
        tmp_path / f".a.json.other.host.{finished.pid}.tmp",
        tmp_path / f".c.json.{host}.{finished.pid}.tmp",  # not a file asked about
    ]
    for path in [*dead, *kept]:
        path.write_bytes(b"x")
    assert remove_dead_temporaries_of([tmp_path / "a.json", tmp_path / "missing" / "b.json"]) == sorted(dead)
    assert sorted(tmp_path.iterdir()) == sorted(kept)
