"""Training telemetry, written by rank 0: TensorBoard, metrics.jsonl, a tqdm bar with ETA, a log line every N steps.

Values arrive already averaged over ranks (the loop all-reduces them); TensorBoard and metrics.jsonl get every
step, the log line averages the steps since the previous line. metrics.jsonl is one JSON object per line,
`{"step": N, "train/loss": ..., ...}` or `{"step": N, "val/loss": ...}`; it is appended to on resume.

Metrics are a record of the run, not the run: when logging.dir cannot be written (a full disk, a quota, a
vanished mount) one warning names the file and the error, metrics.jsonl and TensorBoard stop, and training,
checkpoints and the log lines go on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from layoutlmv3 import atomic_files
from layoutlmv3.progress import is_terminal

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
# Dense bf16/fp16 tensor-core peaks (TFLOP/s per device, no sparsity), matched in this order against
# torch.cuda.get_device_name(); fp32 runs have no entry (set logging.peak_tflops for them).
PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("A100", 312.0))


def model_flops_per_sample(
    non_embedding_params: int, num_layers: int, hidden_size: int, text_length: int, visual_tokens: int
) -> float:
    """Training FLOPs of one sample: 6 * N * T + 12 * L * H * T^2, with T = text_length + visual_tokens.

    6 * N * T: forward (2) and backward (4) multiply-adds of every non-embedding weight for each of the T
    positions (padding included: it is computed). 12 * L * H * T^2: the attention scores and the weighted sum
    (2 * 2 * T^2 * H per layer forward, tripled for backward). Heads applied only to masked positions are
    counted as if applied everywhere, a small overestimate next to the encoder.
    """
    tokens = text_length + visual_tokens
    return 6.0 * non_embedding_params * tokens + 12.0 * num_layers * hidden_size * tokens**2


def encoder_work(model_config, non_embedding_params: int, batch: dict) -> tuple[float, float, float]:
    """(samples, tokens, FLOPs) of a micro-batch of LayoutLMv3 inputs: text tokens that are not padding plus the
    visual tokens, and `model_flops_per_sample` for every sample (padding is computed, so it counts)."""
    size, text_length = batch["input_ids"].shape
    visual = model_config.num_visual_tokens
    flops = size * model_flops_per_sample(
        non_embedding_params, model_config.num_hidden_layers, model_config.hidden_size, text_length, visual
    )
    return float(size), float(batch["attention_mask"].sum()) + size * visual, flops


def device_peak_tflops(precision: str, configured: float | None) -> float | None:
    """Per-device peak for MFU: `configured` if given, else the table for bf16/fp16 on a known GPU, else None."""
    if configured is not None:
        return configured
    if precision == "fp32" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_TFLOPS if key in name), None)


def estimate_mfu(flops: float, seconds: float, devices: int, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s per device over the device's peak."""
    return flops / seconds / devices / (peak_tflops * 1e12)


def _drop_rows_after(path: Path, step: int) -> None:
    """Keep the rows of steps up to `step`, the resumed one: the steps an interrupted attempt logged past its last
    checkpoint are trained again, and would otherwise appear twice (and a row cut by a kill, never whole)."""
    if not path.is_file():
        return
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            row_step = None
        if isinstance(row_step, int) and row_step <= step:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        atomic_files.write_text(path, "".join(kept))
        logger.info("%s: %d row(s) past the resumed step %d dropped (they are trained again)", path, dropped, step)


class MetricsLogger:
    """No-op unless `enabled` (rank 0). Use as a context manager: it owns the bar and the open files.
    `resumed_in_place`: the run resumed a checkpoint of its own checkpoint.dir (the steps logged past it by the
    interrupted attempt are dropped); a fresh run or a branch off another directory's checkpoint leaves the file's
    rows alone (they may be another run's)."""

    def __init__(
        self,
        directory: str | Path,
        enabled: bool,
        every: int,
        total_steps: int,
        start_step: int,
        tensorboard: bool = True,
        progress: bool = True,
        resumed_in_place: bool = False,
    ) -> None:
        self.enabled, self.every, self.total_steps = enabled, every, total_steps
        self.directory = Path(directory)
        self._window: dict[str, list[float]] = defaultdict(list)
        self._stack = contextlib.ExitStack()
        self.writer = self.jsonl = self.bar = None
        self._files_failed = False
        if not enabled:
            return
        if progress and is_terminal(sys.stderr):  # in a log file the step lines below are the progress
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
            self._stack.callback(self.bar.close)
            self._stack.enter_context(logging_redirect_tqdm())
        self._guarded(self.directory, lambda: self._open_files(start_step, tensorboard, resumed_in_place))

    def _open_files(self, start_step: int, tensorboard: bool, resumed_in_place: bool) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if resumed_in_place:  # the same run going on: its rows past start_step are trained again
            _drop_rows_after(self.directory / METRICS_FILE, start_step)
        if tensorboard:
            self._stack.enter_context(_quiet_writer_thread_errors())  # left after the files are closed
        self.jsonl = open(self.directory / METRICS_FILE, "a")  # noqa: SIM115 (closed by _close_files)
        self._stack.callback(self._close_files)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides TensorBoard's own records of the steps trained again
            self.writer = SummaryWriter(str(self.directory), purge_step=start_step + 1 if resumed_in_place else None)

    def _guarded(self, path: Path, write: Callable[[], None]) -> None:
        """Run `write`; the first OSError of any metrics file warns once, naming `path`, and ends file output."""
        if self._files_failed:
            return
        try:
            write()
        except OSError as error:
            self._files_failed = True
            logger.warning(
                "cannot write metrics to %s (%s): metrics.jsonl and TensorBoard stop here, training and checkpoints "
                "go on; free space in logging.dir (or point it elsewhere) for the next attempt",
                path,
                error.strerror or error,
            )
            self._close_files()

    def _close_files(self) -> None:
        """Close the metrics files; errors of a run whose files already failed are not repeated."""
        jsonl, writer, self.jsonl, self.writer = self.jsonl, self.writer, None, None
        for close, path in ((getattr(writer, "close", None), self.directory), (getattr(jsonl, "close", None), None)):
            if close is None:
                continue
            try:
                close()
            except OSError as error:
                if not self._files_failed:
                    self._files_failed = True
                    logger.warning(
                        "cannot write metrics to %s (%s): the last metrics may be missing",
                        path or self.directory / METRICS_FILE,
                        error.strerror or error,
                    )

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def log_step(self, step: int, values: dict[str, float]) -> None:
        """One optimizer step's values (names like "train/loss", "perf/samples_per_s")."""
        if not self.enabled:
            return
        self._write(step, values)
        for name, value in values.items():
            self._window[name].append(value)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{values['train/loss']:.4f}", refresh=False)
            self.bar.update(step - self.bar.n)
        if step % self.every == 0 or step == self.total_steps:
            means = {name: sum(v) / len(v) for name, v in self._window.items()}
            logger.info("step %d/%d | %s", step, self.total_steps, _summary(means))
            self._window.clear()

    def write_text(self, name: str, text: str) -> None:
        """A file beside the metrics (e.g. the resolved run config), under the same rule: a failure warns once."""
        if self.enabled:
            self._guarded(self.directory / name, lambda: atomic_files.write_text(self.directory / name, text))

    def log_validation(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._write(step, values)
        logger.info("step %d validation | %s", step, " ".join(f"{k[4:]} {v:.4f}" for k, v in values.items()))

    def _write(self, step: int, values: dict[str, float]) -> None:
        row = json.dumps({"step": step, **values}) + "\n"

        def write_row() -> None:
            self.jsonl.write(row)
            self.jsonl.flush()

        def write_scalars() -> None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

        if self.jsonl is not None:
            self._guarded(self.directory / METRICS_FILE, write_row)
        if self.writer is not None:
            self._guarded(self.directory, write_scalars)


@contextlib.contextmanager
def _quiet_writer_thread_errors():
    """TensorBoard writes from its own thread; a full disk ends that thread with a traceback on stderr and the
    same error at the next `add_scalar`, which MetricsLogger reports as one warning. This hook drops the thread's
    traceback (other threads' errors pass through)."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
            return
        previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def _summary(means: dict[str, float]) -> str:
    """The concise line: total and per-objective losses, then optimisation and throughput figures."""
    parts = [f"loss {means['train/loss']:.4f}"]
    objectives = [name for name in means if name.startswith("train/") and name.endswith("_loss")]
    if objectives:  # pretraining: mlm, mim, wpa
        parts.append(" ".join(f"{name[6:-5]} {means[name]:.3f}" for name in objectives))
    parts.append(f"lr {means['train/lr']:.3g}")
    formats = {
        "train/grad_norm": "gnorm {:.3g}",
        "train/loss_scale": "scale {:.0f}",
        "perf/samples_per_s": "{:.1f} samples/s",
        "perf/tokens_per_s": "{:.0f} tokens/s",
        "perf/mfu": "MFU {:.1%}",
        "perf/gpu_memory_gb": "mem {:.1f} GB",
    }
    parts += [fmt.format(means[name]) for name, fmt in formats.items() if name in means and math.isfinite(means[name])]
    return " | ".join(parts)
