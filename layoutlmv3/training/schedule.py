"""The learning-rate schedule: linear warmup, then linear decay (the paper's schedule for LayoutLMv3).

A pure function of the optimizer step, so a resumed run needs no scheduler state beyond the step it saved, and
the loop sets the rate on the optimizer itself before every step (no DeepSpeed scheduler object to checkpoint).
"""

from __future__ import annotations


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Steps of linear warmup: the paper warms up over 4.8% of the run."""
    return round(total_steps * warmup_ratio)


def learning_rate(step: int, total_steps: int, peak_lr: float, warmup_ratio: float, min_lr_ratio: float = 0.0) -> float:
    """Rate for optimizer step `step` (1-based): peak * step / warmup while warming up, then linear from the peak
    down to peak * min_lr_ratio at `total_steps` (held there if a run goes past its planned length)."""
    if step < 1:
        raise ValueError(f"steps are 1-based, got {step}")
    warmup = warmup_steps(total_steps, warmup_ratio)
    if step <= warmup:
        return peak_lr * step / warmup
    floor = peak_lr * min_lr_ratio
    progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
    return peak_lr - (peak_lr - floor) * progress
