"""Training the VQ-VAE image tokenizer (`pretraining.image_tokenizer`) as a job of the one trainer: N ranks,
exact resume, preemption, the trainer's schedule, metrics and checkpoints; pages from
`pretraining.image_tokenizer_data`.

The engine runs in fp32 (a DeepSpeed JSON enabling bf16/fp16 is refused: it would cast the codebook and its
moving averages too); `train.autocast: bf16` runs the encoder and decoder under bf16 autocast instead, the
quantiser staying in fp32. On several ranks the codebook's moving averages are updated from all ranks' codes
(the quantiser all-reduces them), so every rank holds the same codebook.

The output directory (output.dir) receives the final tokenizer (config.json + model.safetensors:
`ImageTokenizer.from_pretrained(dir)`), eval_metrics.json, reconstructions.png (held-out originals above their
reconstructions), metrics.jsonl, TensorBoard logs, run_config.yaml, and checkpoints/ for resuming.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from layoutlmv3 import atomic_files
from layoutlmv3.config_loading import load_config, require
from layoutlmv3.pretraining.image_tokenizer import ImageTokenizer, ImageTokenizerConfig
from layoutlmv3.pretraining.image_tokenizer_data import (
    DataConfig,
    PageBatches,
    autocast,
    evaluate,
    held_out_images,
    image_source,
    save_reconstruction_grid,
)
from layoutlmv3.training.checkpointing import on_rank_zero
from layoutlmv3.training.engine import Training
from layoutlmv3.training.runner import run_job
from layoutlmv3.training.sections import CheckpointSection, LoggingSection, TrainSection

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
NO_TEXT_TOKENIZER = "none"  # the fingerprint a checkpoint records for a job without a text vocabulary
METRICS_FILE = "eval_metrics.json"
GRID_FILE = "reconstructions.png"


@dataclass
class ImageTokenizerModel:
    flavor: str = "base"  # tiny or base (ImageTokenizerConfig.from_flavor)
    overrides: dict[str, Any] = field(default_factory=dict)  # ImageTokenizerConfig fields, e.g. codebook_size

    def build(self) -> ImageTokenizerConfig:
        try:
            return ImageTokenizerConfig.from_flavor(self.flavor, **self.overrides)
        except (TypeError, ValueError) as error:
            raise ValueError(f"model: {error}") from None


@dataclass
class ImageTokenizerTrain(TrainSection):
    """The trainer's train section with the image tokenizer's defaults (cosine decay, AdamW's betas and eps)."""

    steps: int = 1000
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    decay: str = "cosine"  # after warmup: linear, cosine or constant
    autocast: str = "fp32"  # bf16: encoder and decoder under bf16 autocast (the quantiser always in fp32)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.autocast in PRECISIONS, f"train.autocast must be one of {PRECISIONS}, got {self.autocast!r}")


@dataclass
class ImageTokenizerLogging(LoggingSection):
    dir: str = ""  # "": output.dir
    val_every: int = 500  # held-out evaluation every N steps, and at the last step


@dataclass
class ImageTokenizerCheckpoint(CheckpointSection):
    dir: str = ""  # "": output.dir/checkpoints
    every: int = 0  # 0: at the end and on preemption only
    keep: int = 1  # checkpoints kept (the newest)


@dataclass
class ImageTokenizerOutput:
    dir: str = "outputs/image_tokenizer"  # the trained tokenizer, its metrics, logs and checkpoints
    grid_images: int = 8  # held-out pages in reconstructions.png

    def __post_init__(self) -> None:
        require(bool(self.dir), "output.dir must not be empty")
        require(self.grid_images >= 1, f"output.grid_images must be >= 1, got {self.grid_images}")


@dataclass
class ImageTokenizerRunConfig:
    model: ImageTokenizerModel = field(default_factory=ImageTokenizerModel)
    data: DataConfig = field(default_factory=lambda: DataConfig(synthetic_pages=200))
    train: ImageTokenizerTrain = field(default_factory=ImageTokenizerTrain)
    logging: ImageTokenizerLogging = field(default_factory=ImageTokenizerLogging)
    checkpoint: ImageTokenizerCheckpoint = field(default_factory=ImageTokenizerCheckpoint)
    output: ImageTokenizerOutput = field(default_factory=ImageTokenizerOutput)
    deepspeed: str = "ds_configs/image_tokenizer_fp32.json"  # micro-batch, accumulation, ZeRO (fp32 engine)

    def __post_init__(self) -> None:
        self.model.build()  # an unknown flavor or field fails with the config, not at start-up
        self.logging.dir = self.logging.dir or self.output.dir
        self.checkpoint.dir = self.checkpoint.dir or str(Path(self.output.dir) / "checkpoints")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_image_tokenizer_config(path: str | Path | None, overrides: list[str] | None = None) -> ImageTokenizerRunConfig:
    """YAML (None: defaults) + `--section.key VALUE` overrides, checked (layoutlmv3.config_loading)."""
    try:
        return load_config(ImageTokenizerRunConfig, path, overrides)
    except ValueError as error:
        if "unknown key(s) in config: ['training']" in str(error):
            raise ValueError(f"{error}; the old `training` section was split: {OLD_TRAINING_KEYS}") from None
        raise


# Where the settings of the former one-process trainer's `training` section live now.
OLD_TRAINING_KEYS = (
    "out_dir -> output.dir, steps -> train.steps, batch_size -> train.global_batch_size, learning_rate -> "
    "train.lr, lr_schedule -> train.decay, warmup_steps -> train.warmup_ratio, grad_clip -> gradient_clipping in "
    "the DeepSpeed JSON, log_every -> logging.every, eval_every -> logging.val_every, checkpoint_every -> "
    "checkpoint.every, grid_images -> output.grid_images, precision -> train.autocast, device -> the accelerator"
)


def run(config: ImageTokenizerRunConfig, resume: str = "auto") -> int:
    """Train the tokenizer; returns the exit code (layoutlmv3.training.signals)."""
    return run_job(lambda: ImageTokenizerJob(config), resume)


class ImageTokenizerJob:
    """The page source (listed once), the held-out pages, the model with the seed's initial codebook."""

    def __init__(self, config: ImageTokenizerRunConfig) -> None:
        self.config = config
        _check_fp32_engine(config.deepspeed)
        self.source = image_source(config.data)
        torch.manual_seed(config.train.seed)  # the same weights and codebook on every rank
        self.model = ImageTokenizer(config.model.build()).train()
        # Read on every rank before the process group exists: a source without held-out pages stops all ranks
        # alike (rank 0 alone measures them later).
        self.eval_images = held_out_images(self.source, config.data, self.model.config.image_size)
        self.tokenizer_fingerprint = NO_TEXT_TOKENIZER
        self.description = f"image tokenizer ({config.model.flavor}, {self.model.codebook_size} codes)"
        logger.info(
            "%d %s items; %d held-out pages for evaluation", len(self.source.items), self.source.kind,
            len(self.eval_images),
        )  # fmt: skip

    def make_task(self, training: Training) -> ImageTokenizerTask:
        if training.zero_stage == 3:
            raise ValueError("the image tokenizer is trained with ZeRO 0-2 (it is small; ZeRO-3 would split it)")
        return ImageTokenizerTask(self, training)


class ImageTokenizerTask:
    """Reconstruction + commitment loss; held-out MSE/PSNR and codebook use, measured by rank 0."""

    metric_names = ("loss", "recon_loss", "commit_loss", "perplexity", "codebook_usage")

    def __init__(self, job: ImageTokenizerJob, training: Training) -> None:
        self.job, self.training, self.config = job, training, job.config
        size = job.model.config.image_size
        self.loader = PageBatches(
            job.source, self.config.data, size, training.micro_batch_size, training.rank, training.world_size,
            self.config.train.seed,
        )  # fmt: skip
        self.eval_images = job.eval_images if training.rank == 0 else None
        self.last_eval: dict[str, float] = {}

    def forward(self, batch: torch.Tensor) -> list[torch.Tensor]:
        images = batch.to(self.training.device, non_blocking=True).float() / 255
        with autocast(self.training.device, self.config.train.autocast):
            output = self.training.engine(images)
        usage = torch.zeros(self.job.model.codebook_size, device=output.codes.device)
        usage[output.codes.flatten()] = 1
        return [output.loss, output.recon_loss, output.commit_loss, output.perplexity, usage.mean()]

    def work(self, batch: torch.Tensor) -> tuple[float, float, float]:
        samples = float(len(batch))
        return samples, samples * self.job.model.config.num_tokens, 0.0  # tokens: codes; no MFU for a conv net

    def validate(self, step: int) -> dict[str, float] | None:
        if self.eval_images is None:
            return None  # rank 0 measures; the weights are the same everywhere
        module = self.training.engine.module
        values = evaluate(module, self.eval_images, self.training.micro_batch_size, self.config.train.autocast)
        self.last_eval = {"step": step, **values}
        return {f"val/{name}": value for name, value in values.items()}

    def finish(self) -> None:
        """Rank 0 writes the tokenizer, the last held-out figures and the reconstruction grid to output.dir."""
        out = Path(self.config.output.dir)
        on_rank_zero(self._write, f"the image tokenizer not written to {out}")
        logger.info("image tokenizer written to %s: %s", out, _format(self.last_eval))

    def _write(self) -> None:
        out, module = Path(self.config.output.dir), self.training.engine.module
        module.save_pretrained(out)
        if not self.last_eval:
            self.validate(self.config.train.steps)
        atomic_files.write_text(out / METRICS_FILE, json.dumps(self.last_eval, indent=2) + "\n")
        save_reconstruction_grid(module, self.eval_images[: self.config.output.grid_images], out / GRID_FILE)

    def state_dict(self) -> dict[str, Any]:
        return {"last_eval": self.last_eval}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_eval = dict(state.get("last_eval", {}))


def _check_fp32_engine(path: str) -> None:
    """Refuse a DeepSpeed JSON that would cast the model (and with it the codebook statistics) to 16 bits."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return  # the trainer reports an unreadable JSON with its own message
    sections = {kind: values.get(kind) for kind in ("bf16", "fp16")} if isinstance(values, dict) else {}
    enabled = [kind for kind, section in sections.items() if isinstance(section, dict) and section.get("enabled")]
    if enabled:
        raise ValueError(
            f"{path} enables {enabled[0]}: the image tokenizer trains on an fp32 engine (its codebook statistics "
            "need fp32); use ds_configs/image_tokenizer_fp32.json and train.autocast: bf16 for bf16 compute"
        )


def _format(metrics: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4g}" for name, value in metrics.items())
