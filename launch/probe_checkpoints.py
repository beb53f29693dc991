"""Watch a pretraining run pay off: fine-tune each of its checkpoints (FUNSD by default) and chart entity F1
against the pretraining step.

Each checkpoint becomes a model directory (launch/convert.py's conversion, pretraining heads dropped) and is
fine-tuned by launch/finetune.py with the given fine-tuning config, in OUT/finetune/TAG. Locally the checkpoints
run one after another; on Slurm, slurm/finetune_sweep.sbatch runs one array task per checkpoint (--index) and a
last job collects. Collecting writes OUT/probe.md and OUT/probe.csv (step, dev F1, test F1 per checkpoint) and
OUT/probe.png (F1 against step), and prints the table; the fine-tunes' own output goes to stderr with the logs.
A checkpoint already probed (its results.json exists) is not probed again. Each checkpoint is verified before
it is converted (launch/convert.py's checks): a damaged one is named and left out (exit 1, the others probed); a
checkpoint holding a pickle that would run code, or one of another job (image tokenizer, fine-tuning), stops the
probe (exit 2).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from layoutlmv3.convert import convert_checkpoint
from layoutlmv3.convert.checkpoint import add_allow_global, check_pretraining_checkpoint
from layoutlmv3.finetune.config import load_finetune_config
from layoutlmv3.finetune.train import RESULTS_FILE
from layoutlmv3.training.checkpointing import (
    DamagedCheckpoint,
    UnsafeCheckpoint,
    checkpoint_tags,
    read_checkpoint,
    tag_step,
)

logger = logging.getLogger("probe")

EPILOG = """\
examples:
  python launch/probe_checkpoints.py --checkpoints outputs/checkpoints/pretrain/base --data ../shared/data/funsd \\
      --out outputs/probe/base                      # every checkpoint, one after another, then the chart
  sbatch --array=0-9 slurm/finetune_sweep.sbatch --checkpoints CKPT_DIR --data FUNSD --out outputs/probe/base
  python launch/probe_checkpoints.py --checkpoints CKPT_DIR --out OUT --collect   # the chart of what is done
Settings of the fine-tuning config pass through as --section.key VALUE (e.g. --train.steps 300).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--checkpoints", type=Path, required=True, help="checkpoint.dir of a pretraining run")
    parser.add_argument("--out", type=Path, required=True, help="directory for models, fine-tunes and the chart")
    parser.add_argument("--config", type=Path, default=Path("configs/finetune/funsd.yaml"), help="fine-tuning YAML")
    parser.add_argument("--data", help="fine-tuning data root (default: the config's, or synthetic forms)")
    parser.add_argument("--index", type=int, help="probe only the INDEX-th checkpoint by step (a Slurm array task)")
    parser.add_argument("--collect", action="store_true", help="only write the table and chart of what is done")
    add_allow_global(parser)
    return parser


REPO_ROOT = Path(__file__).resolve().parents[1]
STDERR_FD = 2


def absolute_paths(args: argparse.Namespace) -> None:
    """Paths as the user meant them from where they ran the probe (the fine-tunes run in the repository root);
    the default config is the repository's."""
    if not args.config.is_absolute() and not args.config.exists() and (REPO_ROOT / args.config).is_file():
        args.config = REPO_ROOT / args.config
    args.config, args.out, args.checkpoints = args.config.resolve(), args.out.resolve(), args.checkpoints.resolve()
    if args.data:
        args.data = str(Path(args.data).resolve())


def check_finetune_settings(args: argparse.Namespace, overrides: Sequence[str]) -> None:
    """The fine-tuning config and its overrides, read now: a typo is one line before any checkpoint is converted,
    not a failure after the first conversion."""
    placeholders = ["--model.path", json.dumps(str(args.out / "models" / "TAG"))]
    load_finetune_config(
        args.config, [*overrides, *placeholders, *(["--data.dir", json.dumps(args.data)] if args.data else [])]
    )


def check_kinds(tags: Sequence[Path]) -> None:
    """Refuse, before any work, checkpoints of another job (their records name its model): the image
    tokenizer's or a fine-tuning run's checkpoints have no pretraining model to fine-tune. A damaged record is
    left to its turn (named, the others probed)."""
    for tag in tags:
        try:
            checkpoint = read_checkpoint(tag)
        except DamagedCheckpoint:
            continue
        check_pretraining_checkpoint(checkpoint)


def probe(tag: Path, args: argparse.Namespace, overrides: Sequence[str]) -> dict:
    """Convert (verified first) and fine-tune the checkpoint in tag directory `tag` (skipped when its results
    exist); returns its results."""
    model, run = args.out / "models" / tag.name, args.out / "finetune" / tag.name
    if (run / RESULTS_FILE).is_file():
        logger.info("%s: already probed", tag.name)
        return json.loads((run / RESULTS_FILE).read_text())
    checkpoint = read_checkpoint(tag)
    if not (model / "config.json").is_file():
        convert_checkpoint(checkpoint, model, drop_pretraining_heads=True, allowed_globals=tuple(args.allow_global))
    command = [sys.executable, "-m", "launch.finetune", "--config", str(args.config), "--model", str(model)]
    command += ["--out", str(run), *(["--data", args.data] if args.data else []), *overrides]
    logger.info("%s: fine-tuning (step %d): %s", checkpoint.tag, checkpoint.step, " ".join(command))
    # Its stdout (the results JSON, also in results.json) joins its logs on stderr: the probe's stdout is the table.
    done = subprocess.run(command, cwd=REPO_ROOT, stdout=STDERR_FD)
    if done.returncode != 0:
        raise RuntimeError(f"fine-tuning {checkpoint.tag} failed with exit code {done.returncode}")
    return json.loads((run / RESULTS_FILE).read_text())


def collect(tags: Sequence[Path], out: Path) -> list[dict]:
    """The rows of every probed checkpoint (tag directories), written as probe.md, probe.csv and probe.png."""
    rows = []
    for tag in tags:
        results = out / "finetune" / tag.name / RESULTS_FILE
        if results.is_file():
            try:
                values = json.loads(results.read_text())
                metric = next(key for key in values if key.startswith("dev_") and key != "dev_history")[4:]
                rows.append({"step": tag_step(tag), "tag": tag.name, "metric": metric,
                             "dev": values[f"dev_{metric}"], "test": values["test"][metric]})  # fmt: skip
            except (ValueError, KeyError, TypeError, StopIteration) as error:
                logger.warning("%s: unreadable, left out of the table (%r); delete it to probe again", results, error)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "probe.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", "tag", "metric", "dev", "test"])
        writer.writeheader()
        writer.writerows(rows)
    metric = rows[0]["metric"] if rows else "f1"
    lines = [f"| pretraining step | dev {metric} | test {metric} |", "|---:|---:|---:|"]
    lines += [f"| {row['step']} | {row['dev']:.4f} | {row['test']:.4f} |" for row in rows]
    (out / "probe.md").write_text("\n".join(lines) + "\n")
    _chart(rows, out / "probe.png")
    missing = len(tags) - len(rows)
    logger.info(
        "%d checkpoint(s) in %s%s", len(rows), out / "probe.md", f"; {missing} not probed yet" if missing else ""
    )
    return rows


def _chart(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        logger.warning("matplotlib is not installed: no %s (the table has the figures)", path)
        return
    figure, axes = pyplot.subplots(figsize=(6, 3.5))
    steps = [row["step"] for row in rows]
    axes.plot(steps, [row["test"] for row in rows], marker="o", label="test")
    axes.plot(steps, [row["dev"] for row in rows], marker="s", linestyle="--", label="dev (selection)")
    metric = rows[0]["metric"] if rows else "f1"
    axes.set(xlabel="pretraining step", ylabel=metric, title="Fine-tuning each pretraining checkpoint")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = build_parser().parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    absolute_paths(args)
    tags = checkpoint_tags(args.checkpoints)  # a damaged record included: named when its turn comes
    if not tags:
        print(f"error: no complete checkpoints in {args.checkpoints}", file=sys.stderr)
        return 2
    if args.index is not None and not 0 <= args.index < len(tags):
        print(f"error: --index {args.index}: {args.checkpoints} has {len(tags)} checkpoints", file=sys.stderr)
        return 2
    os.environ.pop("RANK", None)  # each fine-tune is a process of its own, whatever launched this one
    failed = []
    if not args.collect:
        chosen = tags if args.index is None else [tags[args.index]]
        try:
            check_kinds(chosen)
            check_finetune_settings(args, overrides)
        except (OSError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        for tag in chosen:
            try:
                probe(tag, args, overrides)
            except UnsafeCheckpoint as error:  # planted or replaced: nothing more of this directory is opened
                print(f"error: {error}", file=sys.stderr)
                return 2
            except (OSError, ValueError, RuntimeError) as error:  # the next checkpoints are still probed
                logger.error("%s: %s", tag.name, error)
                failed.append(tag.name)
    if args.index is None:
        collect(tags, args.out)
        sys.stdout.write((args.out / "probe.md").read_text())
    if failed:
        print(f"error: not probed: {', '.join(failed)} (the reasons are logged above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
