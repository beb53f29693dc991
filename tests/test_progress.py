"""Progress in a log file is plain lines, never a bar's carriage-return redraws."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

from layoutlmv3.progress import LogProgress, progress

REPO_ROOT = Path(__file__).resolve().parents[1]


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


def test_training_in_a_log_file_has_step_lines_and_no_bar(tmp_path, monkeypatch) -> None:
    from layoutlmv3.training.metrics import MetricsLogger

    with open(tmp_path / "slurm-1.out", "w") as log:
        monkeypatch.setattr(sys, "stderr", log)
        with MetricsLogger(
            tmp_path / "runs", enabled=True, every=1, total_steps=3, start_step=0, tensorboard=False
        ) as m:
            assert m.bar is None  # the per-step log lines are the progress in a file
        leader, follower = pty.openpty()
        with os.fdopen(follower, "w") as terminal:
            monkeypatch.setattr(sys, "stderr", terminal)
            with MetricsLogger(tmp_path / "runs2", enabled=True, every=1, total_steps=3, start_step=0,
                               tensorboard=False) as m:  # fmt: skip
                assert isinstance(m.bar, tqdm)
        os.close(leader)


def test_a_batch_log_of_synthetic_pages_has_no_carriage_returns(tmp_path) -> None:
    """What a Slurm job's slurm-*.out gets from a command with progress: lines, never a bar's redraws."""
    with open(tmp_path / "slurm-2.out", "w") as log:
        done = subprocess.run(
            [sys.executable, "-m", "data_prep.synth", "--out", str(tmp_path / "pages"), "--pages", "2"],
            stdout=log, stderr=log, cwd=REPO_ROOT, timeout=300,
        )  # fmt: skip
    text = (tmp_path / "slurm-2.out").read_text()
    assert done.returncode == 0, text
    assert "\r" not in text and "synth: 2/2 page (100%)" in text
