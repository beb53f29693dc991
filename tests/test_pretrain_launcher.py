"""launch/pretrain.py under the real DeepSpeed launcher: CPU, gloo, 2 ranks, tiny model, synthetic shards.

One small world (BPE vocabulary, shards, untrained tiny image tokenizer: conftest.py's `world`) serves every run.
The straight 20-step ZeRO-2 run is both the end-to-end test and the reference that resumed runs must repeat loss for
loss.
"""

from __future__ import annotations

import functools
import http.server
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil
import pytest
import torch
from torch import nn

from layoutlmv3.data import build_train_loader
from layoutlmv3.model import LayoutLMv3Config
from layoutlmv3.pretraining.inputs import check_shards_tokenizer
from layoutlmv3.pretraining.job import run
from layoutlmv3.pretraining.model import LayoutLMv3ForPretraining
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer, train_bpe
from layoutlmv3.training.checkpointing import (
    COMPLETE_FILE,
    LATEST_FILE,
    DamagedCheckpoint,
    UnsafeCheckpoint,
    check_compatible,
    find_resume_checkpoint,
    read_checkpoint,
    resolve_resume,
    tag_for,
)
from layoutlmv3.training.engine import parameter_groups
from layoutlmv3.training.metrics import (
    METRICS_FILE,
    MetricsLogger,
    device_peak_tflops,
    estimate_mfu,
    model_flops_per_sample,
)
from layoutlmv3.training.schedule import learning_rate, warmup_steps
from layoutlmv3.training.signals import (
    EXIT_BAD_CONFIG,
    EXIT_CHECKPOINT_DIR_IN_USE,
    EXIT_CHECKPOINT_NOT_SAVED,
    EXIT_PREEMPTED,
    EXIT_TOO_MANY_BAD_STEPS,
    StopRequest,
)
from tests.pretrain_world import WORLD_STEPS as STEPS

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 300  # seconds per launch; a healthy one takes 10-30 s


# ---------------------------------------------------------------- the launcher


@dataclass
class Launch:
    returncode: int
    output: str
    checkpoints: Path
    logs: Path
    shm_leftovers: list[str]  # DeepSpeed CPU all-reduce buffers of this run still named in /dev/shm

    def records(self) -> list[dict]:
        path = self.logs / METRICS_FILE
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def losses(self) -> dict[int, float]:
        return {r["step"]: r["train/loss"] for r in self.records() if "train/loss" in r}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _command(world: Path, run_dir: Path, ranks: int, port: int, overrides: tuple[str, ...]) -> list[str]:
    launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks)]
    launcher += ["--master_port", str(port), str(REPO_ROOT / "launch" / "pretrain.py")]
    dirs = ["--checkpoint.dir", str(run_dir / "checkpoints"), "--logging.dir", str(run_dir / "logs")]
    return [*launcher, "--config", str(world / "run.yaml"), *dirs, *overrides]


@dataclass
class Started:
    process: subprocess.Popen
    run_dir: Path
    output: Path  # the launcher's and ranks' stdout + stderr (a file: a pipe nobody reads could fill and block)
    port: int


def _start(world: Path, run_dir: Path, *overrides: str, ranks: int = 2) -> Started:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run_dir.mkdir(parents=True, exist_ok=True)
    output = run_dir / f"launch-{time.monotonic_ns()}.log"
    port = _free_port()
    with open(output, "w") as sink:
        process = subprocess.Popen(
            _command(world, run_dir, ranks, port, overrides),
            cwd=REPO_ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a hung run can be stopped as a whole
        )
    return Started(process, run_dir, output, port)


def _wait_for_a_step(started: Started) -> None:
    """Until the run's metrics hold a completed step (the run must still be going)."""
    metrics = started.run_dir / "logs" / METRICS_FILE
    deadline = time.monotonic() + RUN_TIMEOUT
    while not (metrics.exists() and metrics.read_text().strip()):
        assert started.process.poll() is None, f"the run ended before its first step:\n{started.output.read_text()}"
        assert time.monotonic() < deadline, "no step completed in time"
        time.sleep(0.05)


def _finish(started: Started) -> Launch:
    try:
        started.process.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(started.process.pid, signal.SIGKILL)
        started.process.wait()
        pytest.fail(f"the run did not finish in {RUN_TIMEOUT} s:\n{started.output.read_text()[-5000:]}")
    output = started.output.read_text()
    leftovers = [path.name for path in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{started.port}_*")]
    return Launch(
        started.process.returncode, output, started.run_dir / "checkpoints", started.run_dir / "logs", leftovers
    )


def launch(world: Path, run_dir: Path, *overrides: str, ranks: int = 2) -> Launch:
    return _finish(_start(world, run_dir, *overrides, ranks=ranks))


def _copy_checkpoint(source: Launch, step: int, run_dir: Path) -> None:
    """A new run directory whose checkpoint dir holds only `source`'s checkpoint of `step`."""
    tag = tag_for(step)
    shutil.copytree(source.checkpoints / tag, run_dir / "checkpoints" / tag)


def _assert_same_losses(got: dict[int, float], expected: dict[int, float], steps: range) -> None:
    assert sorted(got) == list(steps)
    for step in steps:
        assert abs(got[step] - expected[step]) <= 1e-6, (step, got[step], expected[step])


@pytest.fixture(scope="session")
def zero2_run(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Launch:
    """The reference: 20 steps straight, ZeRO-2, checkpoints at 10 and 20."""
    return launch(world, tmp_path_factory.mktemp("zero2"))


@pytest.fixture(scope="session")
def zero3_run(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Launch:
    """The reference's first 8 steps under ZeRO-3, with rank 0's loss of micro-batch 5 made NaN, a checkpoint
    every 2 steps (2 kept), and the leftover of a save that crashed before the run (no `complete` marker)."""
    run_dir = tmp_path_factory.mktemp("zero3")
    (run_dir / "checkpoints" / tag_for(1)).mkdir(parents=True)
    overrides = ["--deepspeed", str(REPO_ROOT / "ds_configs" / "cpu_zero3_fp32.json"), "--train.stop_at_step", "8"]
    overrides += ["--train.debug_nan_batches", "[5]", "--logging.val_every", "4"]
    overrides += ["--checkpoint.every", "2", "--checkpoint.keep", "2"]
    return launch(world, run_dir, *overrides)


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_zero2_end_to_end(zero2_run: Launch) -> None:
    assert zero2_run.returncode == 0, zero2_run.output[-5000:]
    losses = zero2_run.losses()
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(math.isfinite(loss) for loss in losses.values())
    assert losses[STEPS] < losses[1]  # it learns
    assert [r["step"] for r in zero2_run.records() if "val/loss" in r] == [10, 20]
    for step in (10, 20):
        checkpoint = read_checkpoint(zero2_run.checkpoints / tag_for(step))
        assert (checkpoint.step, checkpoint.world_size) == (step, 2)
        assert sorted(p.name for p in (checkpoint.path / "rank_state").iterdir()) == ["rank00000.pt", "rank00001.pt"]
    assert (zero2_run.checkpoints / LATEST_FILE).read_text() == tag_for(STEPS)
    assert list(zero2_run.logs.glob("events.out.tfevents.*"))
    assert zero2_run.shm_leftovers == []  # 2 x 69 MB of RAM-backed /dev/shm per run otherwise
    assert (
        "micro-batch 1 x accumulation 2 x 2 ranks = global batch 4" in zero2_run.output
        and f"step {STEPS}/{STEPS} | loss" in zero2_run.output
    )


@pytest.mark.slow
def test_zero3_end_to_end_skips_a_nan_loss(zero3_run: Launch, zero2_run: Launch) -> None:
    assert zero3_run.returncode == 0, zero3_run.output[-5000:]
    losses = zero3_run.losses()
    assert sorted(losses) == list(range(1, 9))
    assert all(math.isfinite(loss) for loss in losses.values())
    # Same data and seeds as the ZeRO-2 reference until the skipped micro-batch shifts the data by one.
    reference = zero2_run.losses()
    for step in (1, 2):
        assert losses[step] == pytest.approx(reference[step], rel=1e-5)
    # Micro-batches 1-4 made steps 1-2; the skipped 5th leaves step 3 to micro-batches 6 and 7.
    assert "non-finite loss at step 3 (micro-batch 5) on 1 rank(s): micro-batch skipped (1 of at most 20)" in (
        zero3_run.output
    )
    assert [r["train/bad_steps"] for r in zero3_run.records() if "train/loss" in r] == [0] * 2 + [1] * 6
    checkpoint = read_checkpoint(zero3_run.checkpoints / tag_for(8))
    assert len(list(checkpoint.path.glob("zero_pp_rank_*_model_states.pt"))) == 2
    assert (zero3_run.checkpoints / LATEST_FILE).read_text() == tag_for(8)
    # The newest two complete checkpoints are kept; older ones and the crash leftover are gone.
    assert sorted(p.name for p in zero3_run.checkpoints.glob("step*")) == [tag_for(6), tag_for(8)]


@pytest.mark.slow
def test_resume_continues_exactly(world: Path, zero2_run: Launch, tmp_path: Path) -> None:
    """Steps 11-20 after resuming from the step-10 checkpoint equal those of the straight run."""
    _copy_checkpoint(zero2_run, 10, tmp_path)
    resumed = launch(world, tmp_path, "--resume", "auto")
    assert resumed.returncode == 0, resumed.output[-5000:]
    assert f"resumed from {tmp_path / 'checkpoints' / tag_for(10)} at step 10" in resumed.output
    _assert_same_losses(resumed.losses(), zero2_run.losses(), range(11, STEPS + 1))


@pytest.mark.slow
def test_universal_checkpoint_resumes_on_another_world_size(world: Path, zero2_run: Launch, tmp_path: Path) -> None:
    """2 ranks -> 1 rank: with lr 0 the first step on one rank leaves the 2-rank step-10 weights untouched."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    _copy_checkpoint(zero2_run, 10, tmp_path)
    one = launch(world, tmp_path, "--train.lr", "0", "--train.stop_at_step", "11", ranks=1)
    assert one.returncode == 0, one.output[-5000:]
    assert "via a universal checkpoint" in one.output
    assert (tmp_path / "checkpoints" / tag_for(10) / "universal" / "zero").is_dir()
    assert sorted(one.losses()) == [11] and math.isfinite(one.losses()[11])
    assert read_checkpoint(one.checkpoints / tag_for(11)).world_size == 1
    saved = get_fp32_state_dict_from_zero_checkpoint(str(zero2_run.checkpoints), tag=tag_for(10))
    continued = get_fp32_state_dict_from_zero_checkpoint(str(one.checkpoints), tag=tag_for(11))
    assert saved.keys() == continued.keys()
    for name, tensor in saved.items():
        assert torch.equal(tensor, continued[name]), name


@pytest.mark.slow
def test_sigusr1_checkpoints_exits_42_and_resumes(world: Path, zero2_run: Launch, tmp_path: Path) -> None:
    """SIGUSR1 to one rank: both stop after the same step, save, exit 42; resuming repeats the straight run."""
    started = _start(world, tmp_path)
    _wait_for_a_step(started)
    runner = psutil.Process(started.process.pid)
    launcher = next(p for p in runner.children() if "deepspeed.launcher.launch" in p.cmdline())
    rank1 = next(p for p in launcher.children() if "--local_rank=1" in p.cmdline())
    rank1.send_signal(signal.SIGUSR1)
    stopped = _finish(started)
    assert stopped.returncode == EXIT_PREEMPTED, stopped.output[-5000:]
    checkpoint = find_resume_checkpoint(stopped.checkpoints)
    assert checkpoint is not None and 1 <= checkpoint.step < STEPS
    assert sorted(stopped.losses()) == list(range(1, checkpoint.step + 1))
    assert (stopped.checkpoints / LATEST_FILE).read_text() == checkpoint.tag

    resumed = launch(world, tmp_path)
    assert resumed.returncode == 0, resumed.output[-5000:]
    _assert_same_losses(resumed.losses(), zero2_run.losses(), range(1, STEPS + 1))


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_exits_42_with_the_data_loader_workers_alive(world: Path, tmp_path: Path) -> None:
    """Ctrl-C reaches every process of the terminal's group: the ranks and their data-loader workers. The first is a
    stop request like SIGUSR1 (the ranks finish the step, save, exit 42); the workers ignore it (forked after the
    ranks' handler was installed, they would otherwise each announce a stop they do not make) and keep feeding
    the step under way."""
    # 8 micro-batches a step: the step under way needs more batches than the workers have prefetched.
    started = _start(world, tmp_path, "--data.num_workers", "1", "--train.global_batch_size", "16")
    _wait_for_a_step(started)
    ranks = _rank_processes(started.process.pid)
    workers = [child for rank in ranks.values() for child in rank.children(recursive=True)]
    assert workers, "no data-loader worker to reach"
    for process in [*ranks.values(), *workers]:
        process.send_signal(signal.SIGINT)
    stopped = _finish(started)
    assert stopped.returncode == EXIT_PREEMPTED, stopped.output[-5000:]
    assert stopped.output.count("Ctrl-C: stopping after this step with a checkpoint") == len(ranks)
    checkpoint = find_resume_checkpoint(stopped.checkpoints)
    assert checkpoint is not None and sorted(stopped.losses()) == list(range(1, checkpoint.step + 1))


class _StallingShards(http.server.SimpleHTTPRequestHandler):
    """Serves a shard directory; once `served` shards have been sent, shard requests get no answer until `flowing`
    is set (a remote store that stopped responding)."""

    served = 0
    limit = 0
    flowing = threading.Event()
    stalled = threading.Event()  # a request is being held

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.endswith(".tar"):
            cls = type(self)
            cls.served += 1
            if cls.served > cls.limit:
                cls.stalled.set()
                cls.flowing.wait()
        super().do_GET()


@pytest.fixture
def stalling_server(world: Path) -> Iterator[str]:
    _StallingShards.served, _StallingShards.limit = 0, 10  # about 5 shards (15 samples) a rank: steps 1-3 or so
    _StallingShards.flowing, _StallingShards.stalled = threading.Event(), threading.Event()
    handler = functools.partial(_StallingShards, directory=str(world / "shards" / "train"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/manifest.json"
    finally:
        _StallingShards.flowing.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.slow
def test_a_stop_while_a_rank_waits_for_data_saves_the_last_step_and_resumes_exactly(
    world: Path, zero2_run: Launch, tmp_path: Path, stalling_server: str
) -> None:
    """The shard server stops answering: a rank waits for its next batch inside the loader. SIGUSR1 to the ranks
    is still honoured within a bound: the step under way is dropped on every rank, the last completed step is
    saved (loader position included, not the batches read ahead) and the run exits 42; resuming with the server
    answering again repeats the straight run's losses."""
    started = _start(world, tmp_path, "--data.train_shards", stalling_server)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not _StallingShards.stalled.is_set():
            assert started.process.poll() is None and time.monotonic() < deadline, started.output.read_text()[-3000:]
            time.sleep(0.1)
        _wait_for_a_step(started)
        time.sleep(1)  # the other rank runs into the collective
        signalled = time.monotonic()
        for process in _rank_processes(started.process.pid).values():
            process.send_signal(signal.SIGUSR1)
        started.process.wait(timeout=60)
        waited = time.monotonic() - signalled
    finally:
        if started.process.poll() is None:
            os.killpg(started.process.pid, signal.SIGKILL)
    stopped = _finish(started)
    assert stopped.returncode == EXIT_PREEMPTED, stopped.output[-5000:]
    assert waited < 40, waited
    checkpoint = find_resume_checkpoint(stopped.checkpoints)
    assert checkpoint is not None, stopped.output[-5000:]
    assert sorted(stopped.losses()) == list(range(1, checkpoint.step + 1))
    assert f"step {checkpoint.step + 1} dropped; saving a checkpoint at step {checkpoint.step}" in stopped.output

    _StallingShards.flowing.set()
    last = checkpoint.step + 2
    resumed = launch(world, tmp_path, "--data.train_shards", stalling_server, "--train.stop_at_step", str(last))
    assert resumed.returncode == 0, resumed.output[-5000:]
    _assert_same_losses(resumed.losses(), zero2_run.losses(), range(1, last + 1))


@pytest.mark.slow
def test_resuming_with_another_loader_layout_names_the_setting(world: Path, zero2_run: Launch, tmp_path: Path) -> None:
    """The saved data position belongs to the loader's layout (here data.num_workers 0): a resume with another one
    is refused at start-up naming the setting and the saved value, not as the loader's internal field."""
    _copy_checkpoint(zero2_run, 10, tmp_path)
    result = launch(world, tmp_path, "--data.num_workers", "1")
    assert result.returncode == EXIT_BAD_CONFIG, result.output[-5000:]
    assert f"{tag_for(10)} was saved with data.num_workers = 0, this run has 1" in result.output, result.output[-3000:]


@pytest.mark.slow
def test_corrupt_shard_is_logged_and_skipped(world: Path, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shutil.copytree(world / "shards" / "train", shards)
    corrupt = sorted(shards.glob("*.tar"))[4]
    corrupt.write_bytes(os.urandom(corrupt.stat().st_size))
    result = launch(world, tmp_path, "--data.train_shards", str(shards), "--train.steps", "6")
    assert result.returncode == 0, result.output[-5000:]
    assert f"skipping unreadable data in shard {corrupt}" in result.output
    assert sorted(result.losses()) == list(range(1, 7))
    assert all(math.isfinite(loss) for loss in result.losses().values())


@pytest.mark.slow
def test_too_many_non_finite_losses_stop_the_run(world: Path, tmp_path: Path) -> None:
    overrides = ["--train.debug_nan_batches", "[3, 4, 5]", "--train.max_bad_steps", "2"]
    result = launch(world, tmp_path, *overrides)
    assert result.returncode == EXIT_TOO_MANY_BAD_STEPS, result.output[-5000:]
    assert "stopping: 3 non-finite losses exceed train.max_bad_steps=2" in result.output
    assert sorted(result.losses()) == [1]


# ---------------------------------------------------------------- faults: checkpoints, storage, hangs


class _PlantedCode:
    """Pickles as a call that creates a file: what an attacker would leave in a checkpoint directory."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_with_planted_code(world: Path, zero2_run: Launch, tmp_path: Path) -> None:
    _copy_checkpoint(zero2_run, STEPS, tmp_path)
    marker = tmp_path / "code-ran"
    planted = tmp_path / "checkpoints" / tag_for(STEPS) / "rank_state" / "rank00000.pt"
    torch.save({"loader": _PlantedCode(marker)}, planted)
    result = launch(world, tmp_path, "--train.steps", str(STEPS + 2), ranks=1)
    assert result.returncode == EXIT_BAD_CONFIG, result.output[-5000:]
    assert f"refusing to load {planted}: its pickle would call posix.system" in result.output
    assert not marker.exists()
    assert not result.losses()


@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back_to_the_previous(
    zero2_run: Launch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shutil.copytree(zero2_run.checkpoints, tmp_path / "checkpoints")
    truncated = tmp_path / "checkpoints" / tag_for(STEPS) / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    size = truncated.stat().st_size
    with open(truncated, "r+b") as handle:
        handle.truncate(size // 2)
    chosen = resolve_resume("auto", tmp_path / "checkpoints")
    assert chosen is not None and chosen.step == 10
    assert str(truncated.name) in caplog.text and "damaged" in caplog.text
    assert not (tmp_path / "checkpoints" / tag_for(STEPS)).exists()  # renamed aside: a new save cannot mix with it
    assert len(list((tmp_path / "checkpoints").glob(f"{tag_for(STEPS)}.damaged-*"))) == 1
    # A lost file is named too (sizes recorded at save), and an explicit path is refused rather than replaced.
    (chosen.path / "rank_state" / "rank00001.pt").unlink()
    with pytest.raises(DamagedCheckpoint, match="rank00001.pt is missing"):
        resolve_resume(str(chosen.path), tmp_path / "checkpoints")
    with pytest.raises(DamagedCheckpoint, match="no checkpoint .* verifies"):
        resolve_resume("auto", tmp_path / "checkpoints")
    with pytest.raises(DamagedCheckpoint, match="holds only damaged checkpoints"):  # never a silent fresh start
        resolve_resume("auto", tmp_path / "checkpoints")


@pytest.mark.slow
def test_a_checkpoint_of_another_shape_or_vocabulary_is_refused_before_loading(zero2_run: Launch) -> None:
    checkpoint = read_checkpoint(zero2_run.checkpoints / tag_for(STEPS))
    assert checkpoint.model_config is not None and checkpoint.files
    same = dict(checkpoint.model_config, attn_implementation="eager", hidden_dropout_prob=0.0)
    check_compatible(checkpoint, same, checkpoint.tokenizer_fingerprint)  # execution settings may change
    deeper = dict(checkpoint.model_config, num_hidden_layers=checkpoint.model_config["num_hidden_layers"] + 1)
    with pytest.raises(ValueError, match=r"its model has num_hidden_layers=2 \(this run: 3\)"):
        check_compatible(checkpoint, deeper, checkpoint.tokenizer_fingerprint)
    with pytest.raises(ValueError, match="was trained with tokenizer .* data.tokenizer is 0123"):
        check_compatible(checkpoint, checkpoint.model_config, "0123")
    assert checkpoint.model_class == "LayoutLMv3ForPretraining"
    check_compatible(checkpoint, checkpoint.model_config, checkpoint.tokenizer_fingerprint, "LayoutLMv3ForPretraining")
    with pytest.raises(
        ValueError, match="is a checkpoint of a LayoutLMv3ForPretraining .another job., this run trains"
    ):
        check_compatible(checkpoint, {}, checkpoint.tokenizer_fingerprint, "ImageTokenizer")
    with pytest.raises(UnsafeCheckpoint, match="posix.system"):
        planted = checkpoint.path.parent.parent / "planted"
        shutil.copytree(checkpoint.path, planted / checkpoint.tag)
        torch.save(_PlantedCode(planted / "x"), planted / checkpoint.tag / "mp_rank_00_model_states.pt")
        resolve_resume("auto", planted)


@pytest.mark.slow
def test_resuming_with_another_model_shape_names_the_setting(world: Path, zero2_run: Launch, tmp_path: Path) -> None:
    """Instead of DeepSpeed's hundred lines of `size mismatch`."""
    _copy_checkpoint(zero2_run, STEPS, tmp_path)
    result = launch(world, tmp_path, "--model.overrides", "{num_hidden_layers: 3}", "--train.steps", "22", ranks=1)
    assert result.returncode == EXIT_BAD_CONFIG, result.output[-5000:]
    assert "its model has num_hidden_layers=2 (this run: 3)" in result.output
    assert "size mismatch" not in result.output


@pytest.mark.slow
def test_full_disk_during_a_save_keeps_the_previous_checkpoint_and_stops(world: Path, tmp_path: Path) -> None:
    """A 7 MB filesystem holds one tiny-model checkpoint (about 5 MB with one rank), not two."""
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=7m", "tmpfs", str(small)]).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        overrides = ["--checkpoint.dir", str(small / "checkpoints"), "--checkpoint.every", "5"]
        result = launch(world, tmp_path, *overrides, "--train.steps", "12", ranks=1)
        assert result.returncode == EXIT_CHECKPOINT_NOT_SAVED, result.output[-5000:]
        assert f"checkpoint 10 not saved: disk full at {small / 'checkpoints' / tag_for(10)}" in result.output
        assert "is not writable" not in result.output
        assert [c.step for c in [resolve_resume("auto", small / "checkpoints")] if c] == [5]  # verified
        assert not (small / "checkpoints" / tag_for(10)).exists()
        assert sorted(result.losses()) == list(range(1, 11))
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def _fill(filler: IO[bytes]) -> None:
    """Write to `filler` until its filesystem has no space left."""
    try:
        while True:
            filler.write(b"\0" * 4096)
            filler.flush()
    except OSError:
        pass


@pytest.mark.slow
def test_a_full_logging_dir_warns_once_and_training_goes_on(world: Path, tmp_path: Path) -> None:
    """logging.dir fills up after the first step: one warning names it, metrics stop, the run finishes with its
    checkpoints (in checkpoint.dir, elsewhere) and exit 0 instead of a traceback."""
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(small)]).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        logs = small / "logs"
        filler = open(small / "filler", "wb", buffering=0)  # noqa: SIM115 (closed below)
        started = _start(world, tmp_path, "--logging.dir", str(logs), ranks=1)
        deadline = time.monotonic() + RUN_TIMEOUT
        while not ((logs / METRICS_FILE).exists() and (logs / METRICS_FILE).read_text().strip()):
            assert started.process.poll() is None and time.monotonic() < deadline, started.output.read_text()[-3000:]
            time.sleep(0.02)
        _fill(filler)
        result = _finish(started)
        rows = (logs / METRICS_FILE).read_text().splitlines()
    finally:
        filler.close()
        subprocess.run(["umount", "-l", str(small)], check=False)
    assert result.returncode == 0, result.output[-5000:]
    assert result.output.count("cannot write metrics to") == 1, result.output[-5000:]
    assert f"cannot write metrics to {logs}" in result.output
    assert "Traceback" not in result.output
    assert 1 <= len(rows) < STEPS
    assert f"step {STEPS}/{STEPS} | loss" in result.output  # the log lines go on
    assert [c.step for c in [find_resume_checkpoint(result.checkpoints)] if c] == [STEPS]


@pytest.mark.slow
def test_unwritable_checkpoint_dir_is_found_before_training_without_a_launcher(world: Path, tmp_path: Path) -> None:
    """Plain `python launch/pretrain.py` (no launcher, no mpi4py) runs as one process and checks the directory."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    command = [sys.executable, str(REPO_ROOT / "launch" / "pretrain.py"), "--config", str(world / "run.yaml")]
    command += ["--checkpoint.dir", str(blocker / "checkpoints"), "--logging.dir", str(tmp_path / "logs")]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_STEP_ID")}
    result = subprocess.run(command, capture_output=True, text=True, env={**env, "DS_ACCELERATOR": "cpu"}, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == EXIT_BAD_CONFIG, output[-3000:]
    assert "running as a single process" in output and "mpi4py" not in output
    assert f"checkpoint.dir {blocker / 'checkpoints'} is not writable" in output
    command[-3:] = [str(tmp_path / "checkpoints"), "--logging.dir", str(blocker / "logs")]  # found now, not at the end
    result = subprocess.run(command, capture_output=True, text=True, env={**env, "DS_ACCELERATOR": "cpu"}, timeout=120)
    assert result.returncode == EXIT_BAD_CONFIG, (result.stdout + result.stderr)[-3000:]
    assert f"logging.dir {blocker / 'logs'} is not writable" in result.stdout + result.stderr


def _rank_processes(launcher: int) -> dict[int, psutil.Process]:
    """The launcher's rank processes by RANK (the launcher's own helpers carry no RANK; a rank's data-loader workers
    carry its RANK and command line, and are told apart by their parent: a rank)."""
    ranks = {}
    for child in psutil.Process(launcher).children(recursive=True):
        try:
            environ, command = child.environ(), " ".join(child.cmdline())
            parent_is_a_rank = "RANK" in child.parent().environ()
        except psutil.Error:
            continue
        if "RANK" in environ and "pretrain.py" in command and not parent_is_a_rank:
            ranks[int(environ["RANK"])] = child
    return ranks


@pytest.mark.slow
def test_a_stopped_rank_is_named_and_the_attempt_ends(world: Path, tmp_path: Path) -> None:
    """SIGSTOP on rank 1: rank 0 names it in a heartbeat line, then gives up at the collective timeout (a crash's
    exit code, which slurm/pretrain.sbatch requeues)."""
    overrides = ["--train.collective_timeout_s", "20", "--train.heartbeat_s", "2", "--logging.every", "1"]
    started = _start(world, tmp_path, *overrides)
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        while "step 3/20" not in started.output.read_text():
            assert started.process.poll() is None and time.monotonic() < deadline, started.output.read_text()[-3000:]
            time.sleep(0.2)
        ranks = _rank_processes(started.process.pid)
        ranks[1].suspend()
        stopped_at = time.monotonic()
        while "a collective failed" not in started.output.read_text():
            assert time.monotonic() - stopped_at < 120, started.output.read_text()[-3000:]
            time.sleep(0.5)
        ranks[1].kill()
        result = _finish(started)
    finally:
        if started.process.poll() is None:
            os.killpg(started.process.pid, signal.SIGKILL)
    assert result.returncode not in (0, EXIT_BAD_CONFIG, EXIT_CHECKPOINT_NOT_SAVED, EXIT_PREEMPTED)
    assert re.search(
        r"waited \d+ s at the .* of step \d+ .*: rank\(s\) \[1\] (not responding|have not arrived)", result.output
    )
    assert "train.collective_timeout_s=20" in result.output


# ---------------------------------------------------------------- the pieces


def test_help_explains_usage_and_exit_codes() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "launch" / "pretrain.py"), "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "--resume" in result.stdout and "--section.key VALUE" in result.stdout and "42" in result.stdout


def test_bad_config_gives_its_exit_code_before_any_set_up(world: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert run(world / "run.yaml", ["--train.warmup_ratio", "2"]) == EXIT_BAD_CONFIG
    assert "train.warmup_ratio must lie in [0, 1], got 2.0" in caplog.text


def test_stale_build_lock_stops_the_run_instead_of_hanging(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A killed op build leaves a lock that would make init_distributed wait forever: refuse, naming the file."""
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    os.utime(lock, (time.time() - 3 * 3600,) * 2)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert run(world / "run.yaml") == EXIT_BAD_CONFIG
    assert f"rm {lock}" in caplog.text


def test_shards_of_another_tokenizer_are_refused(world: Path) -> None:
    check_shards_tokenizer(str(world / "shards" / "train"), LayoutLMv3Tokenizer.from_pretrained(world / "vocab"))
    other = train_bpe(["another", "vocabulary", "altogether"] * 3, vocab_size=300)
    with pytest.raises(ValueError, match=f"were tokenized with tokenizer .* data.tokenizer is {other.fingerprint}"):
        check_shards_tokenizer(str(world / "shards" / "train"), other)
    pattern = str(world / "shards" / "train" / "shard-000000-{000000..000007}.tar")  # no manifest: the samples'
    check_shards_tokenizer(pattern, LayoutLMv3Tokenizer.from_pretrained(world / "vocab"))
    with pytest.raises(ValueError, match=f"shard-000000-000000.tar were tokenized .* is {other.fingerprint}"):
        check_shards_tokenizer(pattern, other)
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        check_shards_tokenizer(str(world / "shards" / "trian"), other)
    loader = build_train_loader(pattern, batch_size=2, num_workers=0, epoch_length=2, tokenizer=other.fingerprint)
    with pytest.raises(ValueError, match=f"was tokenized with tokenizer .*, data.tokenizer is {other.fingerprint}"):
        next(iter(loader))


def test_shards_without_a_manifest_need_the_epoch_length_named_as_a_setting(world: Path) -> None:
    from layoutlmv3.pretraining.inputs import check_train_shards_tokenizer
    from layoutlmv3.pretraining.run_config import load_run_config

    tokenizer = LayoutLMv3Tokenizer.from_pretrained(world / "vocab")
    pattern = str(world / "shards" / "train" / "shard-000000-{000000..000007}.tar")
    config = load_run_config(world / "run.yaml", ["--data.train_shards", pattern])
    with pytest.raises(ValueError, match="data.epoch_batches is needed: the training shards come without a manifest"):
        check_train_shards_tokenizer(config, tokenizer)
    check_train_shards_tokenizer(
        load_run_config(world / "run.yaml", ["--data.train_shards", pattern, "--data.epoch_batches", "4"]), tokenizer
    )
    check_train_shards_tokenizer(load_run_config(world / "run.yaml"), tokenizer)  # the folder's manifest counts


def test_schedule_warms_up_then_decays_linearly() -> None:
    total, peak = 500_000, 1e-4
    warmup = warmup_steps(total, 0.048)
    assert warmup == 24_000
    assert learning_rate(1, total, peak, 0.048) == pytest.approx(peak / warmup)
    assert learning_rate(warmup // 2, total, peak, 0.048) == pytest.approx(peak / 2)
    assert learning_rate(warmup, total, peak, 0.048) == pytest.approx(peak)
    assert learning_rate((warmup + total) // 2, total, peak, 0.048) == pytest.approx(peak / 2)
    assert learning_rate(total, total, peak, 0.048) == 0.0
    assert learning_rate(total, total, peak, 0.048, min_lr_ratio=0.1) == pytest.approx(peak / 10)
    rates = [learning_rate(step, 100, 1.0, 0.1) for step in range(1, 101)]
    assert rates[:10] == sorted(rates[:10]) and rates[9:] == sorted(rates[9:], reverse=True)


def test_no_weight_decay_on_biases_norms_and_token_embeddings() -> None:
    model = LayoutLMv3ForPretraining(LayoutLMv3Config.from_flavor("tiny", vocab_size=300, visual_codebook_size=16))
    decay, no_decay = parameter_groups(model, 0.01)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    names = {id(p): name for name, p in model.named_parameters()}
    exempt = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert len(exempt) + len(decayed) == len(names)  # each parameter once, the tied MLM decoder included
    norms = {f"{n}.{k}" for n, m in model.named_modules() if isinstance(m, nn.LayerNorm) for k in ("weight", "bias")}
    biases = {name for name in names.values() if name.endswith(".bias")}
    assert norms | biases <= exempt
    assert "layoutlmv3.visual_embeddings.cls_token" in exempt
    assert {"layoutlmv3.encoder.layers.0.attention.qkv.weight", "layoutlmv3.text_embeddings.word.weight"} <= decayed


def test_flops_and_mfu() -> None:
    flops = model_flops_per_sample(1000, num_layers=2, hidden_size=8, text_length=3, visual_tokens=197)
    assert flops == 6 * 1000 * 200 + 12 * 2 * 8 * 200**2
    assert estimate_mfu(2e12, seconds=1.0, devices=2, peak_tflops=2.0) == pytest.approx(0.5)
    assert device_peak_tflops("fp32", None) is None
    assert device_peak_tflops("bf16", 123.0) == 123.0


def test_resume_finds_only_complete_checkpoints(tmp_path: Path) -> None:
    for step, complete in ((10, True), (20, True), (30, False)):
        path = tmp_path / tag_for(step)
        path.mkdir()
        if complete:
            (path / COMPLETE_FILE).write_text(json.dumps({"step": step, "world_size": 2}))
    newest = find_resume_checkpoint(tmp_path)
    assert newest is not None and (newest.step, newest.world_size) == (20, 2)
    assert resolve_resume("auto", tmp_path) == newest
    assert resolve_resume("auto", tmp_path / "missing") is None
    assert resolve_resume(str(tmp_path / tag_for(20)), tmp_path).step == 20
    assert resolve_resume(str(tmp_path / tag_for(10)), tmp_path / "branch").step == 10
    # Into a directory holding newer checkpoints, its saves would be pruned as soon as written (a silent loss).
    with pytest.raises(ValueError, match=r"holds checkpoints newer than .*step00000010 \(newest: step00000020\)"):
        resolve_resume(str(tmp_path / tag_for(10)), tmp_path)
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path / tag_for(30)), tmp_path)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        resolve_resume("none", tmp_path)


def test_stop_request_records_signals_and_restores_handlers() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested and stop.signal == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) == before


def test_a_first_ctrl_c_asks_for_a_checkpoint_and_a_second_aborts(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first Ctrl-C asks for a checkpoint; the same Ctrl-C passed on again by a launcher (within
    CTRL_C_REPEAT_S) changes nothing; a later one aborts. Started with Ctrl-C ignored, it stays ignored."""
    from layoutlmv3.training import signals as signals_module

    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal == signal.SIGINT
        assert "Ctrl-C: stopping after this step with a checkpoint" in capfd.readouterr().err
        os.kill(os.getpid(), signal.SIGINT)  # torchrun's copy of the same Ctrl-C
        time.sleep(0.1)
        monkeypatch.setattr(signals_module, "CTRL_C_REPEAT_S", 0.0)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs at the next bytecode
    assert signal.getsignal(signal.SIGINT) == before
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopRequest():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_the_ctrl_c_notice_cannot_break_the_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """stderr piped to a `tee` that the same Ctrl-C ended: the notice fails, the stop request stands."""

    def broken_pipe(fd: int, data: bytes) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("layoutlmv3.training.signals.os.write", broken_pipe)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        assert stop.signal == signal.SIGINT


def test_a_second_run_on_one_checkpoint_dir_is_refused_while_the_first_holds_it(tmp_path: Path) -> None:
    """Two runs on one checkpoint.dir would prune each other's checkpoints: the second waits lock_wait_s for the
    first, then is refused naming it; once the first is gone (killed: the kernel drops its lock) the next gets in."""
    from layoutlmv3.training.run_lock import CheckpointDirInUse, hold_run_lock

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from layoutlmv3.training.run_lock import hold_run_lock; "
         f"hold_run_lock({str(tmp_path)!r}, 0); print('locked', flush=True); time.sleep(120)"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        started = time.monotonic()
        with pytest.raises(
            CheckpointDirInUse, match=rf"checkpoint.dir {tmp_path} is in use by another run \(pid {holder.pid} on "
        ):
            hold_run_lock(tmp_path, 1.5)
        assert time.monotonic() - started >= 1.5
    finally:
        holder.kill()
        holder.wait()
    hold_run_lock(tmp_path, 0)
    hold_run_lock(tmp_path, 0)  # again in the same process: a no-op, not a second handle
    assert f"pid {os.getpid()} on " in (tmp_path / ".run.lock").read_text()


@pytest.mark.slow
def test_a_second_launch_on_a_running_runs_checkpoint_dir_exits_5_naming_it(world: Path, tmp_path: Path) -> None:
    first = _start(world, tmp_path / "first", "--checkpoint.dir", str(tmp_path / "shared"), "--train.steps", "2000")
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not (tmp_path / "shared" / ".run.lock").is_file() or not (tmp_path / "shared" / ".run.lock").read_text():
            assert first.process.poll() is None and time.monotonic() < deadline, first.output.read_text()[-3000:]
            time.sleep(0.1)
        overrides = ["--checkpoint.dir", str(tmp_path / "shared"), "--checkpoint.lock_wait_s", "2"]
        second = launch(world, tmp_path / "second", *overrides, ranks=1)
    finally:
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait()
    assert second.returncode == EXIT_CHECKPOINT_DIR_IN_USE, second.output[-5000:]
    assert f"checkpoint.dir {tmp_path / 'shared'} is in use by another run (pid " in second.output
    assert not second.losses()


def test_metrics_rows_past_the_resumed_step_are_dropped(tmp_path: Path) -> None:
    """Steps an interrupted attempt logged after its last checkpoint are trained again: when the run resumes its own
    checkpoint.dir, their old rows (and a row cut by the kill) go, so every step has one row."""
    rows = [json.dumps({"step": step, "train/loss": 1.0 / step}) for step in range(1, 9)]
    (tmp_path / METRICS_FILE).write_text("\n".join(rows) + '\n{"step": 9, "train/lo')
    whole = (tmp_path / METRICS_FILE).read_text()
    arguments = {"enabled": True, "every": 1, "total_steps": 20, "tensorboard": False, "progress": False}
    with MetricsLogger(tmp_path, start_step=5, **arguments):  # a fresh run or a branch: maybe another run's rows
        pass
    assert (tmp_path / METRICS_FILE).read_text() == whole
    with MetricsLogger(tmp_path, start_step=5, resumed_in_place=True, **arguments):
        pass
    assert (tmp_path / METRICS_FILE).read_text() == "\n".join(rows[:5]) + "\n"


def test_a_mixture_of_corpora_is_configured_and_each_corpus_checked(world: Path, tmp_path: Path) -> None:
    from layoutlmv3.pretraining.inputs import check_train_shards_tokenizer, train_sources
    from layoutlmv3.pretraining.run_config import load_run_config

    corpora = (
        f"[{{shards: {world / 'shards' / 'train'}, weight: 0.8}}, {{shards: {world / 'shards' / 'val'}, weight: 0.2}}]"
    )
    config = load_run_config(world / "run.yaml", ["--data.train_shards", corpora])
    sources = train_sources(config)
    assert [(str(source.shards), source.weight) for source in sources] == [
        (str(world / "shards" / "train"), 0.8),
        (str(world / "shards" / "val"), 0.2),
    ]
    check_train_shards_tokenizer(config, LayoutLMv3Tokenizer.from_pretrained(world / "vocab"))
    other = tmp_path / "other"
    shutil.copytree(world / "shards" / "val", other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "tokenizer": "0123456789abcdef"}))
    mixed = f"[{{shards: {world / 'shards' / 'train'}}}, {{shards: {other}, weight: 0.5}}]"
    config = load_run_config(world / "run.yaml", ["--data.train_shards", mixed])
    with pytest.raises(ValueError, match=f"{other} were tokenized with tokenizer 0123456789abcdef"):
        check_train_shards_tokenizer(config, LayoutLMv3Tokenizer.from_pretrained(world / "vocab"))
    with pytest.raises(ValueError, match="weight must be > 0"):
        load_run_config(world / "run.yaml", ["--data.train_shards", f"[{{shards: {other}, weight: 0}}]"])
