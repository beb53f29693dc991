"""The learning-rate schedule: linear warmup, then linear decay (the paper's schedule for LayoutLMv3), cosine
decay (the image tokenizer's) or a constant rate.

A pure function of the optimizer step, so a resumed run needs no scheduler state beyond the step it saved, and
the loop sets the rate on the optimizer itself before every step (no DeepSpeed scheduler object to checkpoint).
"""

from __future__ import annotations

import math

DECAYS = ("linear", "cosine", "constant")


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Steps of linear warmup: the paper warms up over 4.8% of the run."""
    return round(total_steps * warmup_ratio)


def learning_rate(
    step: int,
    total_steps: int,
    peak_lr: float,
    warmup_ratio: float,
    min_lr_ratio: float = 0.0,
    decay: str = "linear",
) -> float:
    """Rate for optimizer step `step` (1-based): peak * step / warmup while warming up, then from the peak down to
    peak * min_lr_ratio at `total_steps` along a line or a half cosine (held there if a run goes past its planned
    length), or the peak throughout (`decay="constant"`)."""
    if step < 1:
        raise ValueError(f"steps are 1-based, got {step}")
    warmup = warmup_steps(total_steps, warmup_ratio)
    if step <= warmup:
        return peak_lr * step / warmup
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    if decay == "constant":
        return peak_lr
    floor = peak_lr * min_lr_ratio
    progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
    if decay == "cosine":
        progress = 0.5 * (1 - math.cos(math.pi * progress))
    return peak_lr - (peak_lr - floor) * progress
