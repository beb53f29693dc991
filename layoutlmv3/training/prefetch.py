"""The train loader's batches, fetched by a background thread so the loop can wait for the next one and still
answer a stop request.

A read that blocks (a remote shard server that stopped answering, a `pipe:` command that never writes) would
otherwise hold the main thread inside the loader, and a stop signal's handler only sets a flag there: nothing
logged, no checkpoint, no exit 42 until data came. Here the main thread polls a one-batch queue and asks, between
polls, whether to give up (training.loop gives up on a stop request, after a grace period for the batch).

Each batch travels with the loader position taken right after the loader handed it out, in the fetching thread,
before the next one is read: `position` is then the position after the last batch the loop *used*, never one that
counts a batch fetched ahead and not trained on. That is the position a checkpoint must hold.

The reading thread must not draw from the process's global torch RNG, which the loop reseeds before every
micro-batch for dropout: a draw from the other thread in the middle of a forward pass would change its dropout
masks depending on timing (and a resumed run would no longer repeat the uninterrupted one). A torch DataLoader
draws its iterators' base seed from that RNG unless it has a generator of its own: it is given one.

Failures of the reading thread end the run as they did when the loop read the loader itself: an exception of the
loader (corrupt data, a DataLoader worker killed) is raised in the loop's thread, the same object, at the batch it
replaced, and again at every later `next` (never a wait on a thread that is gone); a loader whose passes yield
nothing MAX_EMPTY_PASSES times in a row (every shard of the rank unreadable, in exact mode) is a RuntimeError, not a
thread spinning for ever while the loop waits. Memory: the thread holds at most two batches beyond the loader's own
read-ahead (one in the one-slot queue, one waiting to go in). The thread is a daemon: neither a second Ctrl-C nor
the end of the run waits for a read that never returns (`close` gives it CLOSE_WAIT_S).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader

from .task import ResumableBatches

POLL_S = 0.2  # how often a waiting loop looks at its stop condition
CLOSE_WAIT_S = 5.0  # how long `close` waits for the reading thread to finish the batch it is making
MAX_EMPTY_PASSES = 3  # passes over the loader in a row without a batch (an exact-mode resume may make one)


class PrefetchedBatches:
    """Batches of `loader`, epoch after epoch (each `iter` of the loader continues from its position), read ahead
    by one daemon thread. Close it (or use it as a context manager) when training ends."""

    def __init__(self, loader: ResumableBatches) -> None:
        self.loader = loader
        dataloader = getattr(loader, "dataloader", None)
        if isinstance(dataloader, DataLoader) and dataloader.generator is None:
            dataloader.generator = torch.Generator().manual_seed(0)  # see the module docstring
        self.position: dict[str, Any] = loader.state_dict()  # after the last batch handed to the loop
        self._queue: queue.Queue[tuple[Any, dict[str, Any] | None, BaseException | None]] = queue.Queue(maxsize=1)
        self._closed = threading.Event()
        self._error: BaseException | None = None  # the loader's error, raised at every `next` once seen
        self._thread = threading.Thread(target=self._fetch, name="batch-prefetch", daemon=True)

    def __enter__(self) -> PrefetchedBatches:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def next(self, give_up: Callable[[], bool]) -> Any | None:
        """The next batch; None if `give_up()` (asked every POLL_S while the queue is empty) turned true first.
        An error of the loader is raised here, in the loop's thread."""
        if self._closed.is_set():
            raise RuntimeError("the train loader's reading thread was closed: no more batches")
        if self._thread.ident is None:
            self._thread.start()
        while True:
            if self._error is not None:
                raise self._error
            try:
                batch, position, error = self._queue.get(timeout=POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():  # it ends only after queueing its error
                    raise RuntimeError("the train loader's reading thread ended without a batch or an error") from None
                if give_up():
                    return None
                continue
            if error is not None:
                self._error = error
                raise error
            self.position = position
            return batch

    def close(self) -> None:
        """Stop reading ahead, waiting up to CLOSE_WAIT_S for the batch being made. A thread blocked inside the
        loader stays blocked (it is a daemon: it does not keep the process alive)."""
        self._closed.set()
        if self._thread.ident is not None:
            self._thread.join(CLOSE_WAIT_S)

    def _fetch(self) -> None:
        try:
            empty_passes = 0
            while not self._closed.is_set():
                batches = 0
                for batch in self.loader:
                    batches += 1
                    if not self._put((batch, self.loader.state_dict(), None)):
                        return
                empty_passes = 0 if batches else empty_passes + 1
                if empty_passes == MAX_EMPTY_PASSES:
                    epoch = self.loader.state_dict().get("epoch", "?")
                    raise RuntimeError(
                        f"the train loader yielded no batch in {MAX_EMPTY_PASSES} passes in a row (now at epoch "
                        f"{epoch}): this rank reads no sample (its shards unreadable: see the warnings above; or, in exact mode, "
                        "fewer shards than ranks)"
                    )
        except BaseException as error:  # handed to the loop's thread, which raises it
            self._put((None, None, error))

    def _put(self, item: tuple[Any, dict[str, Any] | None, BaseException | None]) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False
