"""Tiny runs of transformers' Trainer over our models, shared by the interop tests and their attacks."""

from __future__ import annotations

from pathlib import Path

import torch

from layoutlmv3.model import LayoutLMv3Config
from tests.model_inputs import random_inputs

WORDS = ["alpha", "beta", "gamma", "total", "date"]


def tiny_config(**overrides) -> LayoutLMv3Config:
    """The tiny flavour over a 300-token vocabulary (what `train_bpe(WORDS * n, vocab_size=300)` gives)."""
    return LayoutLMv3Config.from_flavor("tiny", vocab_size=300, **overrides)


def token_rows(count: int, length: int, vocab_size: int = 300) -> list[dict[str, torch.Tensor]]:
    """`count` single-page rows of random inputs (seeds 0..count-1) with 3-class token labels, as a Trainer's
    dataset holds them."""
    rows = []
    for seed in range(count):
        inputs = random_inputs(batch=1, length=length, vocab_size=vocab_size, seed=seed)
        row = {name: tensor[0] for name, tensor in inputs.items()}
        rows.append({**row, "labels": row["input_ids"] % 3})
    return rows


def run_trainer(model: torch.nn.Module, out: Path, trainer_class: type | None = None, processing_class=None, **options):
    """Two steps of `trainer_class` (our LayoutLMv3Trainer by default) on four random rows; TrainingArguments
    `options` override the defaults (no saves, no logging, CPU)."""
    import transformers

    from layoutlmv3.hf_trainer import LayoutLMv3Trainer

    rows = token_rows(4, length=16)
    arguments = transformers.TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=2, max_steps=2, learning_rate=1e-3, report_to=[],
        use_cpu=True, disable_tqdm=True, logging_strategy="no", **{"save_strategy": "no", **options},
    )  # fmt: skip
    trainer_class = trainer_class or LayoutLMv3Trainer
    trainer = trainer_class(model=model, args=arguments, train_dataset=rows, processing_class=processing_class)
    trainer.train()
    return trainer
