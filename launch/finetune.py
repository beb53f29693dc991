"""Fine-tune LayoutLMv3 on FUNSD-format forms (entity labelling: HEADER / QUESTION / ANSWER, BIO tags).

One process on CPU or one GPU. The YAML config (configs/finetune/*.yaml) sets windows, boxes, optimizer and
schedule; any of its settings can be overridden as --section.key VALUE. The best model by dev F1 is saved to
OUTPUT/best (model + tokenizer, loadable by launch/predict.py); OUTPUT/results.json has the test scores.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from data_prep.synth import write_corpus
from layoutlmv3.finetune.config import (
    FinetuneConfig,
    load_finetune_config,
)
from layoutlmv3.finetune.funsd import SPLITS
from layoutlmv3.finetune.train import finetune

EPILOG = """\
examples:
  python launch/finetune.py --config configs/finetune/funsd.yaml --data /data/funsd --model outputs/models/base
  python launch/finetune.py --config configs/finetune/tiny.yaml --model outputs/models/tiny --train.steps 5
  (no --data: synthetic FUNSD-format forms are generated under OUTPUT/synthetic)
  python launch/finetune.py --config configs/finetune/funsd.yaml --data /data/funsd --model outputs/models/base \\
      --model.init random --out outputs/finetune/scratch   # same architecture and vocabulary, fresh weights
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        usage="%(prog)s --config YAML --model DIR [--data DIR] [--out DIR] [--section.key VALUE ...]",
    )
    parser.add_argument("--config", type=Path, required=True, help="YAML fine-tuning config")
    parser.add_argument("--model", required=True, help="model directory with tokenizer files (launch/convert.py)")
    parser.add_argument("--data", help="FUNSD root with training_data/ and testing_data/ (default: synthetic forms)")
    parser.add_argument("--out", help="output directory (overrides output.dir)")
    return parser


def write_synthetic_forms(config: FinetuneConfig) -> Path:
    """FUNSD-format synthetic forms under output.dir/synthetic (written once; the same seed gives the same forms)."""
    root = Path(config.output.dir) / "synthetic"
    seed = config.train.seed
    write_corpus(root / SPLITS[0], config.data.synthetic_train_pages, seed=seed)
    write_corpus(root / SPLITS[1], config.data.synthetic_test_pages, seed=seed + 1)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = build_parser().parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = [*overrides, "--model.path", args.model]
    if args.data:
        overrides += ["--data.dir", args.data]
    if args.out:
        overrides += ["--output.dir", args.out]
    try:
        config = load_finetune_config(args.config, overrides)
        if not config.data.dir:
            config.data.dir = str(write_synthetic_forms(config))
        results = finetune(config)
    except (ValueError, OSError) as error:  # bad config, data or model directory: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        json.dumps({"best_step": results["best_step"], "dev_f1": results["dev_f1"], "test_f1": results["test"]["f1"]})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
