"""Progress in a log file is plain lines, never a bar's carriage-return redraws."""

from __future__ import annotations

import io
import os
import pty

from tqdm import tqdm

from layoutlmv3.progress import LogProgress, progress


def test_a_log_file_gets_a_line_per_interval_and_one_at_the_end(monkeypatch) -> None:
    clock = iter(float(t) for t in range(0, 1000, 10))  # every call 10 s later
    monkeypatch.setattr("layoutlmv3.progress.time.monotonic", lambda: next(clock))
    stream = io.StringIO()
    with progress(total=100, desc="synth", unit="page", every_s=25, stream=stream) as bar:
        assert isinstance(bar, LogProgress)
        for _ in range(7):
            bar.set_postfix(rejects=0)
            bar.update(10)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 3  # at 30 s and 60 s of updates, then the final count on close
    assert "synth: 30/100 page (30%), 0.75 page/s, ETA 1m33s, rejects=0" in lines[0]  # 30 pages in 40 s
    assert "synth: 70/100 page (70%)" in lines[-1] and "ETA" in lines[-1]


def test_iterating_counts_every_item_and_closes_with_the_total() -> None:
    stream = io.StringIO()
    assert list(progress(range(5), desc="predict", unit="file", stream=stream)) == list(range(5))
    assert stream.getvalue().count("\n") == 1 and "predict: 5/5 file (100%)" in stream.getvalue()


def test_a_terminal_gets_the_bar_and_disable_gets_nothing() -> None:
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as terminal:
        assert isinstance(progress(total=3, stream=terminal), tqdm)
    os.close(leader)
    stream = io.StringIO()
    bar = progress(total=3, disable=True, stream=stream)
    bar.update(3)
    bar.close()
    assert stream.getvalue() == ""
