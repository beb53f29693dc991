"""The run configuration: a tree of dataclasses read from YAML, with dotted command-line overrides.

`--train.lr 1e-4` style overrides are parsed as YAML scalars and applied before validation, so a typo in a key
or a value of the wrong type fails at start-up with the dotted path in the message, not hours into a run.
Batch size, gradient accumulation, precision and ZeRO stage are NOT here: the DeepSpeed JSON is their one
source of truth, read back from the engine.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from layoutlmv3.pretraining.collator import MaskingConfig
from layoutlmv3.yaml_files import read_yaml


@dataclass
class ModelSection:
    flavor: str = "base"
    overrides: dict[str, Any] = field(default_factory=dict)  # LayoutLMv3Config fields, e.g. attn_implementation
    init_from: str | None = None  # a model directory (ours or transformers') to continue pretraining from
    compile_layers: bool = False  # torch.compile each encoder layer (GPU fast path; ZeRO-1/2)


@dataclass
class DataSection:
    train_shards: str = ""  # a shard directory with manifest.json, or a brace pattern
    val_shards: str | None = None
    tokenizer: str = ""  # vocab.json + merges.txt directory; its fingerprint must match the shards'
    max_length: int = 512
    pad_to: str | int = "max_length"
    boxes: str = "segment"  # the paper used segment-level layout positions
    num_workers: int = 4
    shuffle_buffer: int = 1000
    epoch_batches: int | None = None  # batches per epoch per rank (resampled shards); None: one pass
    val_batches: int = 50  # micro-batches per rank per validation (fewer when the held-out shards run out)
    # Length bucketing: 0 (off) or K >= 2 -- each loader worker sorts K micro-batches' worth of pages by length;
    # pays with pad_to "longest" or 64 on corpora of short pages (forms); see benchmarks/padding_waste.py.
    length_bucket_batches: int = 0

    def __post_init__(self) -> None:
        _require(self.max_length >= 3, f"data.max_length must be >= 3, got {self.max_length}")
        _require(
            self.pad_to in ("max_length", "longest") or (isinstance(self.pad_to, int) and self.pad_to > 0),
            f"data.pad_to must be 'max_length', 'longest' or a positive int, got {self.pad_to!r}",
        )
        _require(self.boxes in ("word", "segment"), f"data.boxes must be 'word' or 'segment', got {self.boxes!r}")
        _require(self.num_workers >= 0, f"data.num_workers must be >= 0, got {self.num_workers}")
        _require(self.shuffle_buffer >= 0, f"data.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        _require(
            self.epoch_batches is None or self.epoch_batches >= 1,
            f"data.epoch_batches must be >= 1 or null, got {self.epoch_batches}",
        )
        _require(self.val_batches >= 1, f"data.val_batches must be >= 1, got {self.val_batches}")
        _require(
            self.length_bucket_batches == 0 or self.length_bucket_batches >= 2,
            f"data.length_bucket_batches must be 0 (off) or >= 2, got {self.length_bucket_batches}",
        )


@dataclass
class ObjectiveSection:
    mlm_weight: float = 1.0
    mim_weight: float = 1.0
    wpa_weight: float = 1.0
    # Masking: the defaults (the paper's) and the rules live in MaskingConfig; these fields mirror its own.
    text_mask_ratio: float = MaskingConfig.text_mask_ratio
    span_lambda: float = MaskingConfig.span_lambda
    mask_token_share: float = MaskingConfig.mask_token_share
    random_token_share: float = MaskingConfig.random_token_share
    image_mask_ratio: float = MaskingConfig.image_mask_ratio
    min_block_patches: int = MaskingConfig.min_block_patches
    image_tokenizer: str = ""  # a trained image tokenizer directory (frozen)

    def __post_init__(self) -> None:
        for name in ("mlm_weight", "mim_weight", "wpa_weight"):
            _require(getattr(self, name) >= 0, f"objectives.{name} must be >= 0, got {getattr(self, name)}")
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
class TrainSection:
    steps: int = 500_000
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01
    warmup_ratio: float = 0.048
    min_lr_ratio: float = 0.0
    seed: int = 42
    max_bad_steps: int = 20  # non-finite losses tolerated (each micro-batch skipped) before the run stops
    # Stop (checkpoint, exit 0) after this step while the schedule still spans `steps`: splits a run into jobs.
    stop_at_step: int | None = None
    # Debugging the NaN guard: 1-based micro-batch counts (over the whole run) whose loss rank 0 replaces by NaN.
    debug_nan_batches: list[int] = field(default_factory=list)
    # Seconds a rank waits in a collective (all-reduce, barrier, rendezvous) for its peers before it gives up and
    # exits, so a dead node ends the attempt (requeued) instead of idling the job for torch's 30 minutes. Every
    # healthy wait must fit too: checkpoint saves, validation (trade-off in layoutlmv3/training/distributed.py).
    collective_timeout_s: float = 300.0
    # A rank kept waiting in one step longer than this logs which ranks have not reached it, every heartbeat_s
    # (layoutlmv3/training/heartbeat.py); 0: off. Below collective_timeout_s, or the attempt ends first.
    heartbeat_s: float = 60.0
    # Keep the global batch (micro-batch x accumulation x ranks) at this size on any number of ranks: the
    # gradient accumulation becomes global_batch_size / (micro-batch x ranks), which must divide exactly. null:
    # the DeepSpeed JSON's accumulation, so a run resumed on fewer or more ranks changes its global batch (and
    # says so loudly at start-up).
    global_batch_size: int | None = None

    def __post_init__(self) -> None:
        _require(self.steps >= 1, f"train.steps must be >= 1, got {self.steps}")
        _require(self.lr >= 0, f"train.lr must be >= 0, got {self.lr}")
        _require(all(0 <= beta < 1 for beta in self.betas), f"train.betas must lie in [0, 1), got {self.betas}")
        _require(self.eps > 0, f"train.eps must be > 0, got {self.eps}")
        _require(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        _require(0 <= self.warmup_ratio <= 1, f"train.warmup_ratio must lie in [0, 1], got {self.warmup_ratio}")
        _require(0 <= self.min_lr_ratio <= 1, f"train.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        _require(self.seed >= 0, f"train.seed must be >= 0, got {self.seed}")
        _require(self.max_bad_steps >= 0, f"train.max_bad_steps must be >= 0, got {self.max_bad_steps}")
        _require(
            self.stop_at_step is None or 1 <= self.stop_at_step <= self.steps,
            f"train.stop_at_step must lie in 1..train.steps ({self.steps}) or be null, got {self.stop_at_step}",
        )
        _require(
            self.collective_timeout_s > 0, f"train.collective_timeout_s must be > 0, got {self.collective_timeout_s}"
        )
        _require(self.heartbeat_s >= 0, f"train.heartbeat_s must be >= 0, got {self.heartbeat_s}")
        _require(
            self.global_batch_size is None or self.global_batch_size >= 1,
            f"train.global_batch_size must be >= 1 or null, got {self.global_batch_size}",
        )
        _require(
            all(batch >= 1 for batch in self.debug_nan_batches),
            f"train.debug_nan_batches are 1-based micro-batch counts, got {self.debug_nan_batches}",
        )


@dataclass
class LoggingSection:
    dir: str = "runs/pretrain"
    every: int = 10  # a log line every N steps (TensorBoard and metrics.jsonl get every step)
    val_every: int = 1000  # validation on data.val_shards every N steps; 0: never
    tensorboard: bool = True
    progress: bool = True  # tqdm bar with ETA on rank 0
    peak_tflops: float | None = None  # per-device peak for MFU; None: the table of known GPUs (no MFU on CPU)

    def __post_init__(self) -> None:
        _require(self.every >= 1, f"logging.every must be >= 1, got {self.every}")
        _require(self.val_every >= 0, f"logging.val_every must be >= 0, got {self.val_every}")
        _require(
            self.peak_tflops is None or self.peak_tflops > 0,
            f"logging.peak_tflops must be > 0 or null, got {self.peak_tflops}",
        )


@dataclass
class CheckpointSection:
    dir: str = "checkpoints/pretrain"
    every: int = 1000  # also at the end, on stop_at_step and on preemption; 0: only then
    keep: int = 3  # complete checkpoints kept; older ones are deleted once a newer one is complete
    # Extra dotted type names a checkpoint's pickles may reference when resuming (beyond checkpointing's
    # SAFE_GLOBALS): only for plain-data types of a newer DeepSpeed; a resume refuses anything else.
    allowed_globals: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _require(bool(self.dir), "checkpoint.dir must not be empty")
        _require(self.every >= 0, f"checkpoint.every must be >= 0, got {self.every}")
        _require(self.keep >= 1, f"checkpoint.keep must be >= 1, got {self.keep}")


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
        }
        missing = [name for name, value in required.items() if not value]
        _require(not missing, f"missing required setting(s): {missing}")


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config (None: defaults) and apply `--section.key value` overrides; the result is checked
    for types, value ranges and the required paths."""
    values: dict[str, Any] = {}
    if path is not None:
        values = read_yaml(path) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a run config must be a YAML mapping")
    for dotted, raw in parse_overrides(overrides or []):
        _set_dotted(values, dotted, yaml.safe_load(raw))
    config = build(RunConfig, values, "config")
    config.check_required()
    return config


def parse_overrides(arguments: list[str]) -> list[tuple[str, str]]:
    """['--train.lr', '1e-4', '--data.num_workers=2'] -> [('train.lr', '1e-4'), ('data.num_workers', '2')].

    Top-level settings have no section: `--deepspeed ds_configs/zero3_bf16.json`. Unknown names are reported
    when the config is built, with the known ones.
    """
    pairs, index = [], 0
    while index < len(arguments):
        argument = arguments[index]
        if not argument.startswith("--") or len(argument.split("=", 1)[0]) < 3:
            raise ValueError(f"overrides look like --section.key VALUE, got {argument!r}")
        if "=" in argument:
            key, value = argument[2:].split("=", 1)
            index += 1
        elif index + 1 < len(arguments):
            key, value = argument[2:], arguments[index + 1]
            index += 2
        else:
            raise ValueError(f"override {argument!r} has no value")
        pairs.append((key, value))
    return pairs


def _set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = values
    for name in parents:
        node = node.setdefault(name, {})
        if not isinstance(node, dict):
            raise ValueError(f"cannot override {dotted}: {name} is not a section")
    node[leaf] = value


def build(cls: type, values: Any, path: str):
    """Instantiate dataclass `cls` from a mapping, checking keys and scalar types; `path` names it in errors."""
    if not isinstance(values, dict):
        raise ValueError(f"{path} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) in {path}: {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value, f"{path}.{name}") for name, value in values.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return build(hint, value, path)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, path)
            except ValueError:
                continue
        raise ValueError(f"{path}: {value!r} is not any of {options}")
    if origin is tuple and typing.get_args(hint)[1:] == (Ellipsis,):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{path}: expected a list, got {value!r}")
        return tuple(_coerce(typing.get_args(hint)[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        items = typing.get_args(hint)
        if not isinstance(value, list | tuple) or len(value) != len(items):
            raise ValueError(f"{path}: expected a list of {len(items)} values, got {value!r}")
        return tuple(_coerce(h, v, f"{path}[{i}]") for i, (h, v) in enumerate(zip(items, value, strict=True)))
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ValueError(f"{path}: expected a list, got {value!r}")
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # PyYAML (YAML 1.1) reads `1e-4` as a string
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{path}: expected a number, got {value!r}") from None
    if hint is Any or (isinstance(hint, type) and isinstance(value, hint) and not _bool_as_int(hint, value)):
        return value
    raise ValueError(f"{path}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _bool_as_int(hint: Any, value: Any) -> bool:
    return hint is int and isinstance(value, bool)  # bool is an int subclass; `steps: true` is a mistake


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
