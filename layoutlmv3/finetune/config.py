"""The fine-tuning config: dataclasses read from YAML with dotted overrides (`layoutlmv3.config_loading`), so
typos and wrong types fail at start-up. The optimizer, schedule, fault-handling, logging and checkpoint sections
are the trainer's own (`training.sections`), with fine-tuning defaults; micro-batch, precision and ZeRO come
from the DeepSpeed JSON, as in pretraining, and `train.global_batch_size` keeps the batch on any rank count."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layoutlmv3.config_loading import load_config, require
from layoutlmv3.training.sections import CheckpointSection, LoggingSection, TrainSection

from .funsd import BOX_LEVELS


@dataclass
class FinetuneData:
    dir: str | None = (
        None  # FUNSD root (training_data/, testing_data/) or CORD root (train/ dev/ test/); None: synthetic
    )
    format: str = "funsd"  # funsd, or cord (clovaai/cord's layout: image/ + json/ per split, its own dev split)
    boxes: str = "segment"  # segment: the annotated entity boxes, as the paper; word: each word's own box
    max_length: int = 512  # tokens per window; longer pages become overlapping windows
    stride: int = 128  # tokens shared by consecutive windows of a long page
    dev_fraction: float = 0.1  # FUNSD: of training_data, held out (deterministically, by seed) for model selection
    synthetic_train_pages: int = 64  # with no data.dir: forms written by data_prep.synth into output.dir
    synthetic_test_pages: int = 16  # synthetic pages in the test split
    # task questions with no data.dir: key -> value questions asked per synthetic page, its first fields in page
    # order ("What is the Date?"); 0 asks every field with an answer (about 14 a page)
    synthetic_questions_per_page: int = 4
    # task questions: the fraction of training windows without the answer (they teach "no answer", <s>) that is
    # kept, seeded; 0 trains on answer-holding windows only (short windows: most of a page's hold no answer)
    answerless_windows: float = 1.0
    # The entity types to tag (BIO), e.g. [header, question, answer]; null: those the training annotations use.
    # An entity of another type in any split is an error naming the file (never silently O).
    entity_types: list[str] | None = None
    # task classes: the document classes, e.g. [letter, form, ...]; null: the training split's (sorted)
    classes: list[str] | None = None
    sub_tokens: str = "first"  # which sub-tokens of a word carry its label in training: first, or all (B-X -> I-X)
    # tasks classes/questions: data_prep shards of these pages (build_shards run over data.dir or a folder in it):
    # pages without a words file take their words from the shards instead of running Tesseract again
    words_from_shards: str | None = None

    def __post_init__(self) -> None:
        require(self.format in ("funsd", "cord"), f"data.format must be funsd or cord, got {self.format!r}")
        require(self.boxes in BOX_LEVELS, f"data.boxes must be one of {BOX_LEVELS}, got {self.boxes!r}")
        require(self.max_length >= 3, f"data.max_length must be >= 3, got {self.max_length}")
        require(0 <= self.stride < self.max_length - 2, f"data.stride must lie in 0..max_length-3, got {self.stride}")
        require(0 < self.dev_fraction < 1, f"data.dev_fraction must lie in (0, 1), got {self.dev_fraction}")
        require(self.synthetic_train_pages >= 2, "data.synthetic_train_pages must be >= 2 (train + dev)")
        require(self.synthetic_test_pages >= 1, "data.synthetic_test_pages must be >= 1")
        require(
            self.synthetic_questions_per_page >= 0,
            f"data.synthetic_questions_per_page must be >= 0 (0: every field), got {self.synthetic_questions_per_page}",
        )
        require(
            0 <= self.answerless_windows <= 1,
            f"data.answerless_windows must lie in [0, 1], got {self.answerless_windows}",
        )
        require(self.sub_tokens in SUB_TOKENS, f"data.sub_tokens must be one of {SUB_TOKENS}, got {self.sub_tokens!r}")
        require(
            self.entity_types is None or len(self.entity_types) >= 1,
            "data.entity_types must name at least one type, or be null (the training annotations' types)",
        )


INITS = ("pretrained", "random")
SUB_TOKENS = ("first", "all")
# Settings of the one-process fine-tuner, now the trainer's (named in the error when an old config uses them).
MOVED_SETTINGS = {
    "train.batch_size": "train.global_batch_size (the micro-batch is the DeepSpeed JSON's)",
    "train.eval_every": "logging.val_every",
    "train.grad_clip": "gradient_clipping in the DeepSpeed JSON",
    "train.device": "the accelerator (DS_ACCELERATOR=cpu for CPU)",
    "output.progress": "logging.progress",
    "data.num_workers": "(removed: windows are made once, in memory)",
}


@dataclass
class FinetuneModel:
    path: str = ""  # a model directory (from launch/convert.py, or transformers') with the tokenizer files
    overrides: dict[str, Any] = field(default_factory=dict)  # LayoutLMv3Config fields, e.g. classifier_head
    init: str = "pretrained"  # pretrained: the directory's weights; random: its architecture, fresh weights

    def __post_init__(self) -> None:
        require(self.init in INITS, f"model.init must be one of {INITS}, got {self.init!r}")


@dataclass
class FinetuneTrain(TrainSection):
    """The trainer's train section with the paper's FUNSD settings as defaults (AdamW's usual betas and eps)."""

    steps: int = 1000
    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    global_batch_size: int | None = 16  # windows per optimizer step over all ranks (accumulation fills it)


@dataclass
class FinetuneLogging(LoggingSection):
    dir: str = ""  # "": output.dir (metrics.jsonl, TensorBoard)
    val_every: int = 100  # dev evaluation (and best-model selection) every N steps, and at the last step

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.val_every >= 1,
            f"logging.val_every must be >= 1 (the dev split selects the model), got {self.val_every}",
        )


@dataclass
class FinetuneCheckpoint(CheckpointSection):
    dir: str = ""  # "": output.dir/checkpoints (DeepSpeed checkpoints for resume; the selected model is best/)
    every: int = 0  # 0: at the end and on preemption only
    keep: int = 1  # checkpoints kept (the newest)


@dataclass
class FinetuneOutput:
    dir: str = "outputs/finetune/funsd"  # best/ (the selected model), results.json, metrics, checkpoints/


TASKS = ("entities", "classes", "questions")


@dataclass
class FinetuneConfig:
    # entities: label words (FUNSD, CORD; entity F1); classes: classify whole pages (RVL-CDIP; accuracy);
    # questions: extractive question answering (DocVQA; ANLS)
    task: str = "entities"
    model: FinetuneModel = field(default_factory=FinetuneModel)
    data: FinetuneData = field(default_factory=FinetuneData)
    train: FinetuneTrain = field(default_factory=FinetuneTrain)
    logging: FinetuneLogging = field(default_factory=FinetuneLogging)
    checkpoint: FinetuneCheckpoint = field(default_factory=FinetuneCheckpoint)
    output: FinetuneOutput = field(default_factory=FinetuneOutput)
    deepspeed: str = "ds_configs/finetune_bf16.json"  # micro-batch, precision, ZeRO (ds_configs/finetune_*.json)

    def __post_init__(self) -> None:
        require(self.task in TASKS, f"task must be one of {TASKS}, got {self.task!r}")
        require(bool(self.output.dir), "output.dir must not be empty")
        require(
            not self.data.words_from_shards or self.task in ("classes", "questions"),
            "data.words_from_shards is for task classes or questions (entity annotations carry their own words)",
        )
        self.logging.dir = self.logging.dir or self.output.dir
        self.checkpoint.dir = self.checkpoint.dir or str(Path(self.output.dir) / "checkpoints")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_finetune_config(path: str | Path | None, overrides: list[str] | None = None) -> FinetuneConfig:
    """YAML (None: defaults) + `--section.key VALUE` overrides, checked; model.path is required."""
    try:
        config = load_config(FinetuneConfig, path, overrides)
    except ValueError as error:
        moved = [f"{old} -> {new}" for old, new in MOVED_SETTINGS.items() if _unknown_key(str(error), old)]
        raise ValueError(f"{error}{'; moved: ' + ', '.join(moved) if moved else ''}") from None
    require(bool(config.model.path), "missing required setting: model.path (--model DIR)")
    return config


def _unknown_key(message: str, dotted: str) -> bool:
    """Whether a config error names `dotted` (section.key) among the unknown keys of its section."""
    section, key = dotted.split(".")
    prefix = f"unknown key(s) in config.{section}: "
    return prefix in message and repr(key) in message.split(prefix, 1)[1].split("; known:")[0]
