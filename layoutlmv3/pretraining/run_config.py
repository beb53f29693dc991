"""The pretraining run configuration: a tree of dataclasses read from YAML with dotted command-line overrides, by
the config system all three jobs share (`layoutlmv3.config_loading`).
Batch size, gradient accumulation, precision and ZeRO stage are NOT here: the DeepSpeed JSON is their one
source of truth, read back from the engine.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layoutlmv3.config_loading import build, load_config, parse_overrides, require
from layoutlmv3.pretraining.collator import MaskingConfig
from layoutlmv3.training.sections import CheckpointSection, LoggingSection, TrainSection

__all__ = [
    "CheckpointSection",
    "LoggingSection",
    "RunConfig",
    "TrainSection",
    "build",
    "load_run_config",
    "parse_overrides",
]


@dataclass
class ModelSection:
    flavor: str = "base"  # tiny, small, base or large (LayoutLMv3Config.from_flavor)
    overrides: dict[str, Any] = field(default_factory=dict)  # LayoutLMv3Config fields, e.g. attn_implementation
    init_from: str | None = None  # a model directory (ours or transformers') to continue pretraining from
    # The paper's start: a transformers RoBERTa directory (e.g. roberta-base) whose word embeddings (and, with
    # init_text_parts, 1D positions and encoder layers) the fresh model copies; its vocabulary must be data.tokenizer.
    init_text_from: str | None = None
    init_text_parts: list[str] = field(default_factory=lambda: ["words"])  # some of: words, positions, layers
    compile_layers: bool = False  # torch.compile each encoder layer (GPU fast path; ZeRO-1/2)


@dataclass
class CorpusSection:
    """One corpus of a training mixture (data.train_shards as a list of these)."""

    shards: str  # a shard directory with manifest.json, its manifest, or a brace pattern
    weight: float = 1.0  # share of the training samples, relative to the other corpora's weights

    def __post_init__(self) -> None:
        require(bool(self.shards), "data.train_shards[].shards must not be empty")
        require(self.weight > 0, f"data.train_shards[].weight must be > 0, got {self.weight}")


@dataclass
class DataSection:
    # A shard directory with manifest.json (or the manifest, or a brace pattern); or several corpora mixed by
    # weight: [{shards: /data/iit-cdip, weight: 0.8}, {shards: /data/forms, weight: 0.2}]
    train_shards: str | list[CorpusSection] = ""
    val_shards: str | None = None  # held-out shards for validation losses (null: none)
    tokenizer: str = ""  # vocab.json + merges.txt directory; its fingerprint must match the shards'
    max_length: int = 512  # tokens per page; longer pages are cropped at a random window
    pad_to: str | int = "max_length"  # max_length, longest (in the batch), or a multiple such as 64
    boxes: str = "segment"  # the paper used segment-level layout positions
    num_workers: int = 4  # loader worker processes per rank
    shuffle_buffer: int = 1000  # samples mixed in each worker's shuffle buffer
    epoch_batches: int | None = None  # batches per epoch per rank (resampled shards); None: one pass
    val_batches: int = 50  # micro-batches per rank per validation (fewer when the held-out shards run out)
    # Length bucketing: 0 (off) or K >= 2 -- each loader worker sorts K micro-batches' worth of pages by length;
    # pays with pad_to "longest" or 64 on corpora of short pages (forms); see benchmarks/padding_waste.py.
    length_bucket_batches: int = 0
    # Shards at http(s):// URLs or `pipe:` commands: attempts per shard, and the first back-off (doubled after
    # each failure) before a shard that keeps failing is skipped with a warning (layoutlmv3/data/remote.py).
    remote_attempts: int = 5
    remote_retry_s: float = 2.0  # the first back-off between attempts, doubled after each failure
    # The deadline of one attempt at a remote shard or manifest: seconds spent waiting on the server or command in
    # all (not the training time between samples). Past it the connection is cut or the command's process group
    # killed, and the attempt counts as failed: a stalled or trickling server never holds a rank for ever. Raise
    # it for links slower than about 2 MB/s on 1 GB shards.
    remote_deadline_s: float = 600.0

    def __post_init__(self) -> None:
        require(self.remote_attempts >= 1, f"data.remote_attempts must be >= 1, got {self.remote_attempts}")
        require(self.remote_retry_s >= 0, f"data.remote_retry_s must be >= 0, got {self.remote_retry_s}")
        require(
            math.isfinite(self.remote_deadline_s) and self.remote_deadline_s > 0,
            f"data.remote_deadline_s must be a positive number of seconds, got {self.remote_deadline_s}",
        )
        require(self.max_length >= 3, f"data.max_length must be >= 3, got {self.max_length}")
        require(
            self.pad_to in ("max_length", "longest") or (isinstance(self.pad_to, int) and self.pad_to > 0),
            f"data.pad_to must be 'max_length', 'longest' or a positive int, got {self.pad_to!r}",
        )
        require(self.boxes in ("word", "segment"), f"data.boxes must be 'word' or 'segment', got {self.boxes!r}")
        require(self.num_workers >= 0, f"data.num_workers must be >= 0, got {self.num_workers}")
        require(self.shuffle_buffer >= 0, f"data.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        require(
            self.epoch_batches is None or self.epoch_batches >= 1,
            f"data.epoch_batches must be >= 1 or null, got {self.epoch_batches}",
        )
        require(self.val_batches >= 1, f"data.val_batches must be >= 1, got {self.val_batches}")
        require(
            self.length_bucket_batches == 0 or self.length_bucket_batches >= 2,
            f"data.length_bucket_batches must be 0 (off) or >= 2, got {self.length_bucket_batches}",
        )


@dataclass
class ObjectiveSection:
    mlm_weight: float = 1.0  # weight of masked language modeling in the loss
    mim_weight: float = 1.0  # weight of masked image modeling in the loss
    wpa_weight: float = 1.0  # weight of word-patch alignment in the loss
    # Masking: the defaults (the paper's) and the rules live in MaskingConfig; these fields mirror its own.
    text_mask_ratio: float = MaskingConfig.text_mask_ratio
    span_lambda: float = MaskingConfig.span_lambda  # mean span length (Poisson) of masked text spans
    mask_token_share: float = MaskingConfig.mask_token_share  # share of masked tokens replaced by <mask>
    random_token_share: float = MaskingConfig.random_token_share  # share of masked tokens replaced by a random token
    image_mask_ratio: float = MaskingConfig.image_mask_ratio  # share of image patches masked, in blocks
    min_block_patches: int = MaskingConfig.min_block_patches  # smallest block of masked patches
    image_tokenizer: str = ""  # a trained image tokenizer directory (frozen)

    def __post_init__(self) -> None:
        for name in ("mlm_weight", "mim_weight", "wpa_weight"):
            require(getattr(self, name) >= 0, f"objectives.{name} must be >= 0, got {getattr(self, name)}")
        try:
            self.masking(MaskingConfig.patches_per_side)  # MaskingConfig owns the rules for the masking fields
        except ValueError as error:
            raise ValueError(f"objectives.{error}") from None

    def masking(self, patches_per_side: int) -> MaskingConfig:
        """The collator's masking settings: the fields of this section that MaskingConfig has, on the model's
        patch grid (the model config is the grid's one source)."""
        names = {f.name for f in dataclasses.fields(MaskingConfig)} - {"patches_per_side"}
        return MaskingConfig(**{name: getattr(self, name) for name in names}, patches_per_side=patches_per_side)


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    objectives: ObjectiveSection = field(default_factory=ObjectiveSection)
    train: TrainSection = field(default_factory=TrainSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    deepspeed: str = "ds_configs/zero2_bf16.json"  # micro-batch, accumulation, precision, ZeRO: see ds_config.py

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check_required(self) -> None:
        """The paths a run cannot start without (defaults leave them empty, so they must come from the file)."""
        required = {
            "data.train_shards": self.data.train_shards,
            "data.tokenizer": self.data.tokenizer,
            "objectives.image_tokenizer": self.objectives.image_tokenizer,
            "deepspeed": self.deepspeed,
            "checkpoint.dir": self.checkpoint.dir,
        }
        missing = [name for name, value in required.items() if not value]
        require(not missing, f"missing required setting(s): {missing}")


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config (None: defaults) and apply `--section.key value` overrides; the result is checked
    for types, value ranges and the required paths (layoutlmv3.config_loading)."""
    config = load_config(RunConfig, path, overrides)
    config.check_required()
    return config
