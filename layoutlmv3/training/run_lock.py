"""One run per checkpoint directory: two runs writing one `checkpoint.dir` prune each other's checkpoints and point
`latest` at tags that no longer exist, so the second one is refused before it trains.

Rank 0 holds a POSIX lock (`fcntl.lockf`, which NFS and Lustre pass to their lock servers) on a file in the directory
for as long as the process lives; the kernel drops it when the process ends, however it ends. A requeued Slurm
attempt may start while the lock of a dead node's attempt is still held by the file server (until its lease runs
out), so a held lock is waited on for `checkpoint.lock_wait_s` before the run stops with EXIT_CHECKPOINT_DIR_IN_USE,
which slurm/pretrain.sbatch requeues (like a crash, so a live second run is not requeued for ever).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from pathlib import Path
from typing import IO

LOCK_FILE = ".run.lock"
logger = logging.getLogger(__name__)
_held: list[IO[str]] = []


class CheckpointDirInUse(RuntimeError):
    """Another run holds the lock of the checkpoint directory (EXIT_CHECKPOINT_DIR_IN_USE)."""  # this process's lock files: closing one would release its lock


def hold_run_lock(directory: str | Path, wait_s: float) -> None:
    """Lock `directory` for this process's lifetime; CheckpointDirInUse naming the holder if another run keeps it
    locked for `wait_s` seconds. A file system without locks is warned about and not locked. Locking again in a
    process that holds the lock is a no-op."""
    path = Path(directory) / LOCK_FILE
    if any(Path(held.name).resolve() == path.resolve() for held in _held):
        return
    handle = open(path, "a+")  # noqa: SIM115 (kept open in _held: the lock lives as long as the file is open)
    deadline = time.monotonic() + wait_s
    warned = False
    while True:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except (BlockingIOError, PermissionError):  # EAGAIN / EACCES: another process holds it
            holder = _holder(handle)
            if time.monotonic() >= deadline:
                handle.close()
                raise CheckpointDirInUse(
                    f"checkpoint.dir {directory} is in use by another run ({holder}): two runs would prune each "
                    "other's checkpoints; wait for it to end, or set checkpoint.dir to another directory"
                ) from None
            if not warned:
                logger.warning("checkpoint.dir %s is locked by %s: waiting up to %.0f s", directory, holder, wait_s)
                warned = True
            time.sleep(min(1.0, wait_s))
        except OSError as error:  # ENOLCK and kin: no locks on this file system
            handle.close()
            logger.warning("checkpoint.dir %s cannot be locked (%s): nothing stops a second run there", path, error)
            return
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
    handle.flush()
    _held.append(handle)


def _holder(handle: IO[str]) -> str:
    """Who holds the lock, as it wrote itself into the file (read through our own handle: opening the file again
    and closing it would drop a POSIX lock this process held)."""
    handle.seek(0)
    return handle.read().strip() or "a process that has not said who it is"
