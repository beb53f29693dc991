"""Fine-tune a LayoutLMv3 model with the one trainer (`training.runner`): any number of ranks, DeepSpeed
precision and ZeRO, exact resume, preemption. `task: entities` labels words (`finetune.entities_job`), `task: classes`
classifies pages (`finetune.classify_job`), `task: questions` answers questions (`finetune.qa_job`)."""

from __future__ import annotations

from layoutlmv3.training.runner import run_job

from .config import FinetuneConfig
from .splits import split_dev
from .task_base import BEST_DIR, RESULTS_FILE

__all__ = ["BEST_DIR", "RESULTS_FILE", "finetune", "split_dev"]


def finetune(config: FinetuneConfig, resume: str = "auto") -> int:
    """Train, select on dev, score on test (OUTPUT/best, OUTPUT/results.json); returns the exit code
    (layoutlmv3.training.signals). `resume`: "auto" (the newest complete checkpoint in checkpoint.dir, if any),
    "none", or a checkpoint tag directory."""
    if config.task == "classes":
        from .classify_job import ClassificationJob as Job
    elif config.task == "questions":
        from .qa_job import QuestionAnsweringJob as Job
    else:
        from .entities_job import FinetuneJob as Job
    return run_job(lambda: Job(config), resume)
