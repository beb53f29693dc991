"""What a job plugs into the one trainer: a `Job` (the model and facts known before the engine exists) and the
`Task` it makes once the engine does (its batches, forward pass, validation and what it keeps across resumes).

Pretraining (`pretraining.job`), the image tokenizer (`pretraining.image_tokenizer_job`) and fine-tuning
(`finetune.entities_job`, `finetune.classify_job`, `finetune.qa_job`) are jobs; the trainer
(`training.runner` + `training.loop`) owns everything they share: distributed set-up, the DeepSpeed engine,
the LR schedule, gradient accumulation, the non-finite-loss guard, metrics, checkpoints with loader state,
signals and exact resume.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from .sections import CheckpointSection, LoggingSection, TrainSection


class JobConfig(Protocol):
    """The sections the trainer reads from a job's config (each job adds its own beside them)."""

    train: TrainSection
    logging: LoggingSection
    checkpoint: CheckpointSection
    deepspeed: str  # the DeepSpeed JSON: micro-batch, accumulation, precision, ZeRO

    def to_dict(self) -> dict[str, Any]: ...


class ResumableBatches(Protocol):
    """A rank's batches, epoch after epoch; `state_dict()["epoch"]` is the epoch it is in."""

    def __iter__(self) -> Iterable[dict]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Task(Protocol):
    """A job's part of the train loop, made by `Job.make_task` once the engine exists."""

    metric_names: tuple[str, ...]  # what `forward` returns, loss first; logged as train/NAME, averaged over ranks
    loader: ResumableBatches
    # Optional `loader_settings: Mapping[str, str]`: the job's config setting behind each loader argument, so a
    # resume refused for a changed data layout names the setting (the runner reads it with getattr).

    def forward(self, batch: dict) -> Sequence[torch.Tensor]:
        """The micro-batch through the engine: (loss, *other metrics), scalars; the loss carries the graph."""
        ...

    def work(self, batch: dict) -> tuple[float, float, float]:
        """(samples, tokens, model FLOPs) of the micro-batch, for throughput and MFU."""
        ...

    def validate(self, step: int) -> dict[str, float] | None:
        """Held-out figures named "val/NAME" (a collective: every rank calls it), or None when there are none."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """What the task must get back on resume besides the loader (e.g. the best dev score so far)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def finish(self) -> None:
        """Once training reached train.steps (a collective): e.g. score the selected model on the test split."""
        ...


class Job(Protocol):
    """A training job as the trainer sees it, prepared before the process group exists (rank-independent work:
    reading the config, tokenizers and data, building the model with the seed's weights)."""

    config: JobConfig
    model: nn.Module  # with a `.config` (LayoutLMv3Config): saved inside every checkpoint
    tokenizer_fingerprint: str
    description: str  # what the start-up line calls the model, e.g. its flavor or directory

    def make_task(self, training: Any) -> Task:  # training: engine.Training
        ...
