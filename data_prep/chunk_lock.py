"""One writer per chunk: a POSIX lock on ``progress/{chunk}.lock`` held while a chunk is written.

Two runs on one ``--out`` happen: a requeued array task whose first attempt is still running, a task submitted
twice, a rerun started while the first was cancelled but not yet dead. Without a lock both write the same
chunk; one run's clean-up deletes the other's temporary file and the other's rename then publishes a partial
shard. A run takes the locks of all its chunks, in chunk order (so two runs with overlapping chunk sets cannot
deadlock), before reading their progress; a lock held elsewhere is waited for, with a message naming the holder.
``fcntl.lockf`` locks are released by the kernel when the holder dies, however it dies, and work across hosts on
NFSv4 and on Lustre mounted with ``flock``, where ``flock`` may not (Lustre's ``localflock`` and NFS's ``nolock``
exclude only within one node: run one writer per output there).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)


@contextmanager
def chunk_locks(paths: Sequence[Path]) -> Iterator[None]:
    """Hold the lock files ``paths`` (taken in sorted order, waiting for busy ones) for the ``with`` block."""
    with ExitStack() as stack:
        for path in sorted(paths):
            stack.enter_context(_locked(path))
        yield


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            logger.warning("%s is being written by %s: waiting for it to finish", path.stem, holder)
            fcntl.lockf(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"host {socket.gethostname()} pid {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)
