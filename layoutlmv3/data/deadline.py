"""The one deadline for waits on a source that may never answer (an HTTP server, a `pipe:` command).

A socket timeout bounds one `recv`, not a read: a server that accepts and never answers is caught, but one that
sends a byte every 20 s keeps a reader waiting for ever, and a command that never writes has no timeout at all.
A `Deadline` bounds the *total* time spent waiting on one source (one attempt at a shard, one manifest read):
every blocking call runs inside `deadline.waiting()`, and once the waits add up to `seconds`, a watchdog thread
runs the cancels registered with `on_expiry` (shut the socket down, kill the command's process group). That
makes the blocked call return or raise, and `waiting()` then raises `DeadlineExceeded` -- an ordinary failed
attempt for the caller's retry policy.

Only time inside waits counts: a reader paused between samples (the training step consuming them, a full
prefetch queue) is not waiting on the source, so a slow consumer never fails a healthy read.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from types import TracebackType


class DeadlineExceeded(TimeoutError):
    """A source gave no complete answer within the time its deadline allows."""


class Deadline:
    """A budget of `seconds` of waiting on the source named `what`; `close()` ends the watchdog thread."""

    def __init__(self, seconds: float, what: str) -> None:
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"a deadline must be a positive number of seconds, got {seconds}")
        self.seconds, self.what = seconds, what
        self.expired = False
        self._cancels: list[Callable[[], None]] = []
        self._condition = threading.Condition()
        self._spent = 0.0  # seconds of finished waits
        self._since: float | None = None  # start of the wait in progress
        self._idle = False  # the watchdog sleeps until the next wait begins
        self._closed = False
        self._thread = threading.Thread(target=self._watch, name=f"deadline of {what}"[:60], daemon=True)
        self._thread.start()

    def on_expiry(self, cancel: Callable[[], None]) -> None:
        """Run `cancel` when the deadline passes (at once if it has); its exceptions are ignored."""
        with self._condition:
            if not self.expired:
                self._cancels.append(cancel)
                return
        with contextlib.suppress(Exception):
            cancel()

    def waiting(self) -> _Waiting:
        """A context for one blocking call on the source; raises DeadlineExceeded once the budget is spent."""
        return _Waiting(self)

    def error(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"{self.what}: no complete answer after {self.seconds:g} s of waiting (the deadline of one attempt)"
        )

    def close(self) -> None:
        """Stop watching (the source is closed); waits for the watchdog thread, so none is left behind."""
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._thread.join()

    def _begin(self) -> None:
        with self._condition:
            if self.expired:
                raise self.error()
            self._since = time.monotonic()
            if self._idle:  # a watchdog in a timed wait wakes no later than the deadline anyway
                self._condition.notify()

    def _end(self) -> None:
        with self._condition:
            if self._since is not None:
                self._spent += time.monotonic() - self._since
            self._since = None

    def _watch(self) -> None:
        with self._condition:
            while not self._closed:
                if self._since is None:
                    self._idle = True
                    self._condition.wait()
                    self._idle = False
                    continue
                left = self.seconds - self._spent - (time.monotonic() - self._since)
                if left <= 0:
                    self.expired = True
                    break
                self._condition.wait(left)
            cancels = list(self._cancels) if self.expired else []
        for cancel in cancels:
            with contextlib.suppress(Exception):  # e.g. the process already gone
                cancel()


class _Waiting:
    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline

    def __enter__(self) -> None:
        self.deadline._begin()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.deadline._end()
        # A call that failed once the whole budget was spent failed of the deadline, whichever fired first (a
        # socket timeout equal to the budget can beat the watchdog by a hair on a loaded machine).
        spent = error is not None and self.deadline._spent >= self.deadline.seconds
        if (self.deadline.expired or spent) and (error is None or isinstance(error, Exception)):
            raise self.deadline.error() from error  # whatever the cancelled call made of it
