"""Faults of the machine under a run, on real filesystems: a full disk (a small tmpfs filled up), a read-only one.
Training launches that meet these faults live in test_pretrain_launcher.py (they share its world)."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from data_prep.synth import write_corpus
from data_prep.train_tokenizer import input_files, read_texts
from layoutlmv3.data import build_train_loader
from layoutlmv3.tokenizer import train_bpe
from layoutlmv3.training.metrics import METRICS_FILE, MetricsLogger
from layoutlmv3.training.prefetch import PrefetchedBatches
from layoutlmv3.training.runner import _check_logging_dir
from tests.file_digests import digests
from tests.shard_files import write_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[callable]:
    """mount(size, options) -> a fresh tmpfs directory of that size; all unmounted at teardown."""
    mounted: list[Path] = []

    def mount(size: str, *options: str) -> Path:
        directory = tmp_path / f"tmpfs{len(mounted)}"
        directory.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(directory)]
        if subprocess.run(command, capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(directory)
        return directory

    try:
        yield mount
    finally:
        for directory in mounted:
            subprocess.run(["umount", "-l", str(directory)], check=False)


def fill(directory: Path, leave: int = 0) -> Path:
    """Write a filler file into `directory` until its filesystem has at most `leave` bytes free."""
    filler = directory / "filler"
    with open(filler, "wb") as handle:
        try:
            while os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize > leave:
                handle.write(b"\0" * 4096)
                handle.flush()
        except OSError:
            pass
    return filler


# ---------------------------------------------------------------- data prep on a full or read-only --out


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(6 synthetic pages, a vocabulary, their shards built on a healthy disk: 3 shards, about 180 KB)."""
    root = tmp_path_factory.mktemp("small_corpus")
    write_corpus(root / "in", 6, seed=0)
    words = list(read_texts(input_files([root / "in" / "annotations"])))  # the words the tokenizer CLI would read
    train_bpe(words, vocab_size=300).save_pretrained(root / "vocab")
    corpus = root / "in", root / "vocab", root / "reference"
    assert _build_shards(corpus, corpus[2]).returncode == 0
    return corpus


def _build_shards(corpus: tuple[Path, Path, Path], out: Path, *more: str) -> subprocess.CompletedProcess:
    pages, vocab, _ = corpus
    command = [sys.executable, "-m", "data_prep.build_shards", "--input", str(pages), "--out", str(out)]
    command += ["--ocr", "funsd", "--tokenizer", str(vocab), "--max-samples-per-shard", "2", "--quiet", *more]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)


def _published(out: Path) -> dict[str, str]:
    return digests([path for path in out.glob("*") if path.is_file() and not path.name.startswith(".")], out)


@pytest.mark.slow
def test_data_prep_on_a_full_disk_names_the_path_publishes_nothing_partial_and_resumes(
    small_corpus: tuple[Path, Path, Path], small_tmpfs
) -> None:
    disk = small_tmpfs("1m")
    filler = fill(disk, leave=100_000)  # room for about one shard of three
    result = _build_shards(small_corpus, disk / "out")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"error: cannot write {disk / 'out'}") and "No space left on device" in lines[0]
    assert "the disk is full: free space, then rerun" in lines[0]
    published = _published(disk / "out")
    assert "manifest.json" not in published
    reference = _published(small_corpus[2])
    assert all(reference[name] == digest for name, digest in published.items())  # whole shards only

    filler.unlink()
    resumed = _build_shards(small_corpus, disk / "out")
    assert resumed.returncode == 0, resumed.stderr
    assert _published(disk / "out") == reference


@pytest.mark.slow
def test_data_prep_on_a_read_only_out_is_one_line(small_corpus: tuple[Path, Path, Path], small_tmpfs) -> None:
    disk = small_tmpfs("1m", "ro")
    result = _build_shards(small_corpus, disk)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"error: cannot write {disk}" in result.stderr and "Read-only file system" in result.stderr
    assert "give --out a writable directory" in result.stderr


# ---------------------------------------------------------------- metrics on a full logging.dir


def _values(loss: float) -> dict[str, float]:
    return {"train/loss": loss, "train/lr": 1e-4, "perf/samples_per_s": 10.0}


def test_metrics_on_a_disk_that_fills_up_warn_once_and_go_on(small_tmpfs, caplog: pytest.LogCaptureFixture) -> None:
    disk = small_tmpfs("256k")
    caplog.set_level(logging.INFO)
    with MetricsLogger(disk / "logs", enabled=True, every=1, total_steps=400, start_step=0, progress=False) as metrics:
        metrics.log_step(1, _values(1.0))
        fill(disk)
        for step in range(2, 401):  # rows and TensorBoard records spill onto pages the disk no longer has
            metrics.log_step(step, _values(1.0 / step))
        metrics.log_validation(400, {"val/loss": 0.5})
    warnings = [record.getMessage() for record in caplog.records if "cannot write metrics" in record.getMessage()]
    assert len(warnings) == 1, warnings
    assert str(disk / "logs") in warnings[0] and "No space left on device" in warnings[0]
    assert "step 400/400 | loss 0.0025" in caplog.text  # the log lines go on
    rows = (disk / "logs" / METRICS_FILE).read_text().splitlines()
    assert 1 <= len(rows) < 400
    assert all(math.isfinite(json.loads(row)["train/loss"]) for row in rows[:-1])


def test_metrics_on_a_full_disk_from_the_start_warn_once(small_tmpfs, caplog: pytest.LogCaptureFixture) -> None:
    disk = small_tmpfs("64k")
    (disk / "logs").mkdir()
    fill(disk)
    with MetricsLogger(disk / "logs", enabled=True, every=1, total_steps=50, start_step=0, progress=False) as metrics:
        for step in range(1, 51):
            metrics.log_step(step, _values(1.0))
    assert caplog.text.count("cannot write metrics") == 1, caplog.text


def test_a_full_logging_dir_does_not_stop_a_run_from_starting(small_tmpfs, tmp_path: Path) -> None:
    """A requeued run whose logging disk is full still trains (metrics warn once); a logging.dir that cannot be a
    directory is a mistake in the config, found before training."""
    disk = small_tmpfs("64k")
    fill(disk)
    _check_logging_dir(str(disk / "logs"))
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match=f"logging.dir {tmp_path / 'a-file' / 'logs'} is not writable"):
        _check_logging_dir(str(tmp_path / "a-file" / "logs"))


# ---------------------------------------------------------------- the train loop's reading thread


def _prefetching(root: Path) -> tuple[PrefetchedBatches, object]:
    loader = build_train_loader(root, 1, num_workers=0, seed=3, shuffle_buffer=0, epoch_length=3)
    return PrefetchedBatches(loader), loader


def test_the_reading_thread_hands_out_the_loaders_batches_with_the_position_after_each(tmp_path: Path) -> None:
    """The position kept is the one after the last batch handed out, never one counting a batch read ahead; and
    the reading thread draws nothing from the global torch RNG (the loop seeds dropout from it), not even when it
    starts the next epoch's iterator."""
    write_dataset(tmp_path / "shards", (4, 3))
    straight = build_train_loader(tmp_path / "shards", 1, num_workers=0, seed=3, shuffle_buffer=0, epoch_length=3)
    expected = [(batch["input_ids"], straight.state_dict()) for _, batch in zip(range(7), _epochs(straight))]
    batches, _ = _prefetching(tmp_path / "shards")
    with batches:
        torch.manual_seed(0)
        for input_ids, position in expected:
            time.sleep(0.05)  # the thread reads ahead (and across the epoch boundary)
            assert torch.equal(batches.next(lambda: False)["input_ids"], input_ids)
            assert batches.position == position
        drawn = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(drawn, torch.rand(1))


def _epochs(loader: object) -> Iterator[dict]:
    while True:
        yield from loader


def test_a_wait_for_a_batch_gives_up_when_asked(tmp_path: Path) -> None:
    """A loader that blocks (here: on a lock) cannot hold the loop: `give_up` is asked while it waits."""

    class Stalled:
        def __init__(self) -> None:
            self.release = threading.Event()

        def __iter__(self) -> Iterator[dict]:
            self.release.wait()
            yield {"x": 1}

        def state_dict(self) -> dict:
            return {"at": 0}

        def load_state_dict(self, state: dict) -> None:
            pass

    stalled = Stalled()
    batches = PrefetchedBatches(stalled)
    deadline = time.monotonic() + 0.5
    started = time.monotonic()
    assert batches.next(lambda: time.monotonic() > deadline) is None
    assert 0.5 <= time.monotonic() - started < 2
    stalled.release.set()
    assert batches.next(lambda: False) == {"x": 1}
    batches.close()


# ---------------------------------------------------------------- the reading thread, attacked


class _Scripted:
    """A resumable loader whose passes are scripted: each pass yields its items in turn; an exception instance
    among them is raised there (as the loader would raise it inside the reading thread)."""

    def __init__(self, *passes: list) -> None:
        self.passes, self.epoch, self.drawn, self.made = list(passes), 0, 0, 0

    def __iter__(self) -> Iterator[dict]:
        items = self.passes[self.epoch] if self.epoch < len(self.passes) else self.passes[-1]
        for item in items[self.drawn :]:
            if isinstance(item, BaseException):
                raise item
            self.drawn += 1
            self.made += 1
            yield {"x": item}
        self.epoch, self.drawn = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.drawn = state["epoch"], state["drawn"]


def _within(seconds: float) -> callable:
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() > deadline


@pytest.mark.parametrize(
    "error",
    [
        ValueError("shard s-000001.tar was tokenized with another vocabulary: token id 50321 >= 300"),
        RuntimeError("100 shards in a row held no readable sample (last: s-000099.tar)"),
    ],
)
def test_a_loader_error_in_the_reading_thread_is_raised_in_the_loop_at_its_batch_and_after(error: Exception) -> None:
    """The loop sees the loader's own exception (so the runner's handling and exit code are those of the loop
    reading the loader itself), after the batches before it, and again at every later `next`: never a wait on a
    thread that has ended."""
    with PrefetchedBatches(_Scripted([1, 2, error])) as batches:
        assert [batches.next(_within(5))["x"] for _ in range(2)] == [1, 2]
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(type(error)) as raised:
                batches.next(_within(3))
            assert raised.value is error
            assert time.monotonic() - started < 1


def test_the_batches_go_on_epoch_after_epoch_as_the_loader_yields_them() -> None:
    """Each pass of the loader continues the stream (an empty pass, as an exact-mode resume after an epoch's last
    batch makes, included), exactly as the loop's former `while True: yield from loader`; positions follow."""
    passes = [[1, 2], [], [3], [4, 5, 6], [7]]
    straight, expected = _Scripted(*passes), []
    for _, batch in zip(range(9), _epochs(straight)):
        expected.append((batch["x"], straight.state_dict()))
    with PrefetchedBatches(_Scripted(*passes)) as batches:
        got = []
        for _ in range(9):
            got.append((batches.next(_within(5))["x"], batches.position))
    assert got == expected


def test_a_loader_that_never_yields_is_a_named_error_not_a_spin() -> None:
    """Every shard of the rank unreadable in exact mode: each epoch ends empty. The loop once spun there for ever."""
    with PrefetchedBatches(_Scripted([])) as batches, pytest.raises(RuntimeError, match="in 3 passes in a row"):
        batches.next(_within(5))


def test_the_reading_thread_reads_at_most_two_batches_ahead() -> None:
    loader = _Scripted(list(range(1000)))
    with PrefetchedBatches(loader) as batches:
        assert batches.next(_within(5)) == {"x": 0}
        time.sleep(1.0)
        assert loader.made <= 3  # the one handed out, one in the queue, one waiting to go in


def test_a_killed_dataloader_worker_reaches_the_loop_as_torchs_error() -> None:
    """SIGKILL of a DataLoader worker (the OOM killer): torch notices in the reading thread (within its 5 s status
    check: its SIGCHLD handler exists only for iterators of the main thread) and the loop raises that error."""
    import signal as signals

    from torch.utils.data import DataLoader, IterableDataset

    class Slow(IterableDataset):
        def __iter__(self) -> Iterator[int]:
            for index in range(10**6):
                time.sleep(0.05)
                yield index

    class Resumable:
        dataloader = DataLoader(Slow(), batch_size=1, num_workers=1, multiprocessing_context="fork")

        def __iter__(self) -> Iterator:
            return iter(self.dataloader)

        def state_dict(self) -> dict:
            return {}

    import multiprocessing

    with PrefetchedBatches(Resumable()) as batches:
        batches.next(_within(10))
        (worker,) = multiprocessing.active_children()
        os.kill(worker.pid, signals.SIGKILL)
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="DataLoader worker"):
            while batches.next(_within(15)) is not None:
                pass
        assert time.monotonic() - started < 12


_BLOCKED_RUN = """
import os, sys, threading, time
from torch.utils.data import DataLoader, IterableDataset
from layoutlmv3.training.prefetch import PrefetchedBatches
from layoutlmv3.training.signals import StopRequest

class Blocked(IterableDataset):  # a worker whose read never returns (a dead NFS server)
    def __iter__(self):
        threading.Event().wait()
        yield 0

class Resumable:
    dataloader = DataLoader(Blocked(), batch_size=1, num_workers=1, multiprocessing_context="fork")
    def __iter__(self):
        return iter(self.dataloader)
    def state_dict(self):
        return {}

with StopRequest(), PrefetchedBatches(Resumable()) as batches:
    print("waiting", flush=True)
    deadline = time.monotonic() + float(sys.argv[1])
    assert batches.next(lambda: time.monotonic() > deadline) is None
print("done", flush=True)
"""


@pytest.mark.parametrize("ending", ["run end", "second ctrl-c"])
def test_a_reading_thread_blocked_for_ever_does_not_keep_the_process_alive(ending: str) -> None:
    """At the run's end, or on a second Ctrl-C (which aborts), the process exits although the reading thread sits
    in a DataLoader whose worker never answers."""
    import signal as signals

    wait = "1" if ending == "run end" else "600"
    child = subprocess.Popen(
        [sys.executable, "-c", _BLOCKED_RUN, wait],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "waiting\n"
        if ending == "second ctrl-c":
            child.send_signal(signals.SIGINT)  # a stop request: the loop would give up after 10 s
            time.sleep(2.5)
            child.send_signal(signals.SIGINT)  # a second Ctrl-C aborts
        out, err = child.communicate(timeout=20)
    finally:
        child.kill()
    if ending == "run end":
        assert child.returncode == 0 and out == "done\n", err
    else:
        assert child.returncode != 0 and "KeyboardInterrupt" in err and "done" not in out


# ---------------------------------------------------------------- metrics storage, attacked


class _Failing:
    """A metrics.jsonl whose storage fails: every write raises OSError(`code`)."""

    def __init__(self, code: int, path: Path) -> None:
        self.code, self.path = code, path

    def write(self, text: str) -> int:
        raise OSError(self.code, os.strerror(self.code), str(self.path))

    flush = close = lambda self: self.write("")


@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT", "EIO", "EROFS"])
@pytest.mark.parametrize("where", ["metrics.jsonl", "tensorboard thread"])
def test_metrics_storage_errors_of_any_kind_warn_once_and_training_goes_on(
    where: str, code: str, tmp_path: Path, monkeypatch, caplog: pytest.LogCaptureFixture, capfd
) -> None:
    """A disk I/O error, a filesystem remounted read-only after an error (a tmpfs refuses a read-only remount
    while a file is open for writing, so the error is injected), a quota: one warning naming the path and the
    error, whether it comes from the jsonl write or from TensorBoard's own writer thread (whose traceback is not
    printed)."""
    import errno

    from tensorboard.summary.writer import record_writer

    number = getattr(errno, code)
    caplog.set_level(logging.INFO)
    logs = tmp_path / "logs"
    with MetricsLogger(logs, enabled=True, every=10, total_steps=30, start_step=0, progress=False) as metrics:
        metrics.log_step(1, _values(1.0))
        if where == "metrics.jsonl":
            metrics.jsonl.close()
            metrics.jsonl = _Failing(number, logs / METRICS_FILE)
        else:
            metrics.writer.flush()

            def broken(self, data: bytes) -> None:
                raise OSError(number, os.strerror(number))

            monkeypatch.setattr(record_writer.RecordWriter, "write", broken)
        for step in range(2, 31):
            metrics.log_step(step, _values(1.0 / step))
            time.sleep(0.01)  # TensorBoard's thread writes in the background
    warnings = [record.getMessage() for record in caplog.records if "cannot write metrics" in record.getMessage()]
    assert len(warnings) == 1, warnings
    assert str(logs) in warnings[0] and os.strerror(number) in warnings[0]
    assert "step 30/30 | loss" in caplog.text
    assert "Traceback" not in capfd.readouterr().err


def test_metrics_stay_off_for_the_attempt_once_the_disk_is_freed_and_the_next_attempt_writes(
    small_tmpfs, caplog: pytest.LogCaptureFixture
) -> None:
    """After the warning the files stay closed even if space comes back (no half-written history from a disk
    that flaps); the next attempt (a requeue: a new MetricsLogger) appends again."""
    disk = small_tmpfs("256k")
    kwargs = {"enabled": True, "every": 1, "total_steps": 600, "progress": False, "resumed_in_place": True}
    with MetricsLogger(disk / "logs", start_step=0, **kwargs) as metrics:
        metrics.log_step(1, _values(1.0))
        filler = fill(disk)
        step = 1
        while "cannot write metrics" not in caplog.text and step < 300:
            step += 1
            metrics.log_step(step, _values(1.0))
        assert "cannot write metrics" in caplog.text
        filler.unlink()
        written = (disk / "logs" / METRICS_FILE).read_text()
        for later in range(step + 1, step + 50):
            metrics.log_step(later, _values(1.0))
    assert (disk / "logs" / METRICS_FILE).read_text() == written
    assert caplog.text.count("cannot write metrics") == 1
    last = max(_step_or_0(line) for line in written.splitlines())  # the last row may be cut by the full disk
    with MetricsLogger(disk / "logs", start_step=last, **kwargs) as metrics:
        metrics.log_step(last + 1, _values(0.5))
    assert json.loads((disk / "logs" / METRICS_FILE).read_text().splitlines()[-1])["step"] == last + 1
    assert caplog.text.count("cannot write metrics") == 1


def _step_or_0(line: str) -> int:
    try:
        return json.loads(line)["step"]
    except ValueError:
        return 0


# ---------------------------------------------------------------- data prep storage, attacked


def _one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip()


@pytest.mark.slow
@pytest.mark.parametrize(("inodes", "failing"), [(8, "progress/shard-000000.json"), (13, "manifest.json")])
def test_data_prep_out_of_inodes_at_a_progress_record_or_the_manifest_names_that_file_and_resumes(
    inodes: int, failing: str, small_corpus: tuple[Path, Path, Path], small_tmpfs
) -> None:
    """A disk with bytes left but no inodes (a real ENOSPC at file creation) stops the build at a resume record
    or at the manifest: the line names the file as it would be published (not its hidden temporary); once the
    disk has room the rerun finishes to the same output."""
    disk = small_tmpfs("4m", f"nr_inodes={inodes}")
    line = _one_line(_build_shards(small_corpus, disk / "out"))
    assert line.startswith(f"error: cannot write {disk / 'out' / failing}: No space left on device"), line
    assert "manifest.json" not in _published(disk / "out")
    subprocess.run(["mount", "-o", "remount,nr_inodes=1000", str(disk)], check=True)
    assert _build_shards(small_corpus, disk / "out").returncode == 0
    assert _published(disk / "out") == _published(small_corpus[2])


@pytest.mark.slow
def test_merge_manifests_on_a_full_disk_is_one_line_and_reruns(small_corpus: tuple[Path, Path, Path], small_tmpfs):
    disk = small_tmpfs("4m", "nr_inodes=1000")
    for task in ("0", "1"):
        result = _build_shards(small_corpus, disk, "--num-tasks", "2", "--task-index", task)
        assert result.returncode == 0, result.stderr
    used = os.statvfs(disk).f_files - os.statvfs(disk).f_ffree
    subprocess.run(["mount", "-o", f"remount,nr_inodes={used}", str(disk)], check=True)
    merge = [sys.executable, "-m", "data_prep.merge_manifests", "--out", str(disk)]
    line = _one_line(subprocess.run(merge, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120))
    assert line.startswith(f"error: cannot write {disk / 'rejects.jsonl'}: No space left on device"), line
    assert "the disk is full: free space, then rerun" in line
    assert not any(path.name.startswith(".") for path in disk.iterdir())  # no temporary left
    subprocess.run(["mount", "-o", "remount,nr_inodes=1000", str(disk)], check=True)
    assert subprocess.run(merge, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120).returncode == 0
    assert json.loads((disk / "manifest.json").read_text())["total_samples"] == 6


@pytest.mark.slow
def test_data_prep_out_of_file_handles_says_so_in_one_line(small_corpus: tuple[Path, Path, Path], tmp_path: Path):
    """EMFILE is no storage fault: the line says to raise the open-file limit (or lower --workers)."""
    import resource

    def few_handles() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (12, 12))

    pages, vocab, _ = small_corpus
    command = [sys.executable, "-m", "data_prep.build_shards", "--input", str(pages), "--out", str(tmp_path / "o")]
    command += ["--ocr", "funsd", "--tokenizer", str(vocab), "--max-samples-per-shard", "2", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, preexec_fn=few_handles)
    line = _one_line(result)
    assert "Too many open files" in line and "raise the open-file limit (ulimit -n, now 12)" in line, line
