"""The fine-tuning config: dataclasses read from YAML with dotted overrides, validated by the run-config
machinery of pretraining (`training.run_config.build`), so typos and wrong types fail at start-up."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layoutlmv3.config_loading import load_config, require

from .funsd import BOX_LEVELS


@dataclass
class FinetuneData:
    dir: str | None = None  # FUNSD root (training_data/, testing_data/); None: synthetic forms
    boxes: str = "segment"  # segment: the annotated entity boxes, as the paper; word: each word's own box
    max_length: int = 512
    stride: int = 128  # tokens shared by consecutive windows of a long page
    dev_fraction: float = 0.1  # of training_data, held out (deterministically, by seed) for model selection
    synthetic_train_pages: int = 64  # with no data.dir: forms written by data_prep.synth into output.dir
    synthetic_test_pages: int = 16
    num_workers: int = 0

    def __post_init__(self) -> None:
        require(self.boxes in BOX_LEVELS, f"data.boxes must be one of {BOX_LEVELS}, got {self.boxes!r}")
        require(self.max_length >= 3, f"data.max_length must be >= 3, got {self.max_length}")
        require(0 <= self.stride < self.max_length - 2, f"data.stride must lie in 0..max_length-3, got {self.stride}")
        require(0 < self.dev_fraction < 1, f"data.dev_fraction must lie in (0, 1), got {self.dev_fraction}")
        require(self.synthetic_train_pages >= 2, "data.synthetic_train_pages must be >= 2 (train + dev)")
        require(self.synthetic_test_pages >= 1, "data.synthetic_test_pages must be >= 1")
        require(self.num_workers >= 0, f"data.num_workers must be >= 0, got {self.num_workers}")


INITS = ("pretrained", "random")


@dataclass
class FinetuneModel:
    path: str = ""  # a model directory (from launch/convert.py, or transformers') with the tokenizer files
    overrides: dict[str, Any] = field(default_factory=dict)  # LayoutLMv3Config fields, e.g. classifier_head
    init: str = "pretrained"  # pretrained: the directory's weights; random: its architecture, fresh weights

    def __post_init__(self) -> None:
        require(self.init in INITS, f"model.init must be one of {INITS}, got {self.init!r}")


@dataclass
class FinetuneTrain:
    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 100  # dev evaluation (and best-model save) every N steps, and at the end
    seed: int = 42
    device: str = "auto"  # auto: cuda if available, else cpu

    def __post_init__(self) -> None:
        require(self.steps >= 1, f"train.steps must be >= 1, got {self.steps}")
        require(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        require(self.lr >= 0, f"train.lr must be >= 0, got {self.lr}")
        require(0 <= self.warmup_ratio <= 1, f"train.warmup_ratio must lie in [0, 1], got {self.warmup_ratio}")
        require(self.grad_clip > 0, f"train.grad_clip must be > 0, got {self.grad_clip}")
        require(self.eval_every >= 1, f"train.eval_every must be >= 1, got {self.eval_every}")


@dataclass
class FinetuneOutput:
    dir: str = "outputs/finetune/funsd"  # best/ (the selected model), tensorboard/, results.json
    progress: bool = True


@dataclass
class FinetuneConfig:
    model: FinetuneModel = field(default_factory=FinetuneModel)
    data: FinetuneData = field(default_factory=FinetuneData)
    train: FinetuneTrain = field(default_factory=FinetuneTrain)
    output: FinetuneOutput = field(default_factory=FinetuneOutput)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_finetune_config(path: str | Path | None, overrides: list[str] | None = None) -> FinetuneConfig:
    """YAML (None: defaults) + `--section.key VALUE` overrides, checked; model.path is required."""
    config = load_config(FinetuneConfig, path, overrides)
    require(bool(config.model.path), "missing required setting: model.path (--model DIR)")
    return config
