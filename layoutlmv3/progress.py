"""Progress of long work: a tqdm bar on a terminal; in a log file (a Slurm job's slurm-*.out, a redirected
stderr) a plain line every `every_s` seconds and one at the end, so a cluster log never fills with the bar's
carriage-return redraws."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

LOG_EVERY_S = 30.0


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    initial: int = 0,
    desc: str = "",
    unit: str = "it",
    disable: bool = False,
    every_s: float = LOG_EVERY_S,
    stream: TextIO | None = None,
) -> Any:
    """A tqdm bar when `stream` (default stderr) is a terminal, else a `LogProgress` with the same calls
    (update, set_postfix, close, iteration, `with`)."""
    stream = sys.stderr if stream is None else stream
    if not disable and not is_terminal(stream):
        return LogProgress(iterable, total=total, initial=initial, desc=desc, unit=unit, every_s=every_s, stream=stream)
    return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                file=stream)  # fmt: skip


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is an interactive terminal (a bar redraws well there; a log file gets lines)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        return False


class LogProgress:
    """tqdm's interface, written as one line per `every_s` seconds: `desc: n/total unit (p%), r unit/s, ETA`."""

    def __init__(
        self,
        iterable: Iterable | None,
        *,
        total: int | None,
        initial: int,
        desc: str,
        unit: str,
        every_s: float,
        stream: TextIO,
    ) -> None:
        self.iterable, self.desc, self.unit, self.every_s, self.stream = iterable, desc, unit, every_s, stream
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self._start_n = total, initial, initial
        self.postfix: dict[str, Any] = {}
        self._started = self._last = time.monotonic()
        self._logged_n: int | None = None
        self._closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.every_s:
            self._write()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        if not self._closed and self._logged_n != self.n:
            self._write()  # the final count, unless it was just written
        self._closed = True

    def _write(self) -> None:
        now = time.monotonic()
        self._last, self._logged_n = now, self.n
        elapsed = max(now - self._started, 1e-9)
        rate = (self.n - self._start_n) / elapsed
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        parts = [f"{done} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:.3g} {self.unit}/s")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        parts += [f"{key}={value}" for key, value in self.postfix.items()]
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp} {self.desc + ': ' if self.desc else ''}{', '.join(parts)}", file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
