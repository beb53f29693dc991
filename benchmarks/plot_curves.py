"""Plot a pretraining run's loss curves (MLM, MIM, WPA; train smoothed, validation as points) from metrics.jsonl.

    python benchmarks/plot_curves.py runs/curve/metrics.jsonl --out docs/pretraining_curves.png

metrics.jsonl is what launch/pretrain.py writes next to its TensorBoard events (layoutlmv3.training.metrics);
matplotlib comes with requirements-dev.txt.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OBJECTIVES = ("mlm", "mim", "wpa")


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """(train rows, validation rows) in step order; a resumed run's repeated steps keep the last value."""
    train, val = {}, {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            (val if "val/loss" in row else train)[row["step"]] = row
    return [train[s] for s in sorted(train)], [val[s] for s in sorted(val)]


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        out.append(total / min(index + 1, window))
    return out


def plot(metrics: Path, out: Path, window: int, title: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = read_metrics(metrics)
    if not train:
        raise SystemExit(f"{metrics}: no training rows")
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=110)
    for axis, name in zip(axes, OBJECTIVES, strict=True):
        key = f"train/{name}_loss"
        steps = [row["step"] for row in train if key in row]
        values = [row[key] for row in train if key in row]
        axis.plot(steps, values, color="tab:blue", alpha=0.15, linewidth=0.6)
        axis.plot(steps, moving_average(values, window), color="tab:blue", label=f"train ({window}-step mean)")
        val_key = f"val/{name}_loss"
        if any(val_key in row for row in val):
            axis.plot([r["step"] for r in val if val_key in r], [r[val_key] for r in val if val_key in r],
                      "o-", color="tab:orange", label="validation")  # fmt: skip
        axis.set(title=f"{name.upper()} loss", xlabel="step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", type=Path, help="a run's metrics.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--window", type=int, default=50, help="moving-average window for the training curve")
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    plot(args.metrics, args.out, args.window, args.title)


if __name__ == "__main__":
    main()
