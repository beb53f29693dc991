"""Fine-tune LayoutLMv3 on a downstream task, chosen by the config's `task`:

  entities   label words (FUNSD, CORD or the user's own FUNSD-format forms; BIO tags; entity F1)
  classes    classify whole pages (RVL-CDIP's layout: a folder per class or an index file; accuracy)
  questions  extractive question answering (DocVQA's layout; ANLS)

Runs on the same DeepSpeed trainer as pretraining: one process, or N ranks under `deepspeed`/`torchrun`/`srun`.
The YAML config (configs/finetune/*.yaml) sets windows, boxes, optimizer and schedule; its `deepspeed` key names
the JSON with micro-batch, precision and ZeRO; any setting can be overridden as --section.key VALUE. The best
model by the dev metric is saved to OUTPUT/best (model + tokenizer + processing settings, loadable by
launch/predict.py, launch/classify.py or launch/answer.py); OUTPUT/results.json has the test scores. Pages of the
classes and questions tasks without a words file get one from data_prep shards (data.words_from_shards) or
Tesseract. An interrupted run resumes from OUTPUT/checkpoints (--resume auto, the default).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from data_prep.finetune_data import fill_missing_words, write_synthetic_forms
from data_prep.synth import DOCUMENT_KINDS
from layoutlmv3.config_help import add_common_arguments, config_yaml, report_bad_config, settings_help
from layoutlmv3.finetune.config import (
    FinetuneConfig,
    load_finetune_config,
)
from layoutlmv3.finetune.train import RESULTS_FILE, finetune
from layoutlmv3.training.signals import EXIT_OK

EPILOG = """\
examples:
  python launch/finetune.py --config configs/finetune/funsd.yaml --data /data/funsd --model outputs/models/base
  python launch/finetune.py --config configs/finetune/tiny.yaml --model outputs/models/tiny --train.steps 5
  deepspeed --num_gpus 4 launch/finetune.py --config configs/finetune/funsd.yaml --data /data/funsd \\
      --model outputs/models/base          # global batch 16 kept through accumulation on any rank count
  DS_ACCELERATOR=cpu deepspeed --num_gpus 2 launch/finetune.py --config configs/finetune/tiny.yaml --model M
  (no --data: synthetic pages for the task are generated under OUTPUT/synthetic)
  python launch/finetune.py --config configs/finetune/rvl_cdip.yaml --data /data/rvl-cdip --model M \\
      --data.words_from_shards /data/rvl-cdip-shards   # the words data_prep OCR'd for pretraining
  python launch/finetune.py --config configs/finetune/tiny_qa.yaml --model outputs/models/tiny
  python launch/finetune.py --config configs/finetune/funsd.yaml --data /data/funsd --model outputs/models/base \\
      --model.init random --out outputs/finetune/scratch   # same architecture and vocabulary, fresh weights

exit codes: as launch/pretrain.py -- 0 done, 2 unusable config or data, 4 a checkpoint could not be written,
5 output.dir's checkpoints locked by another run, 42 stopped by SIGUSR1/SIGTERM or a first Ctrl-C after saving a
checkpoint (run again to resume), 1 anything else.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog=f"{EPILOG}\n{settings_help(FinetuneConfig)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        usage="%(prog)s --config YAML --model DIR [--data DIR] [--out DIR] [--resume R] [--print-config] [--section.key VALUE ...]",
    )
    add_common_arguments(
        parser,
        config_help="YAML fine-tuning config (configs/finetune/*.yaml)",
        out_help="output directory (overrides output.dir)",
        resume_help="auto: continue from the newest complete checkpoint in OUTPUT/checkpoints if any (default); none: "
        "start afresh (refused while checkpoints exist); PATH: a checkpoint tag directory",
    )
    parser.add_argument("--model", required=True, help="model directory with tokenizer files (launch/convert.py)")
    parser.add_argument(
        "--data",
        help="the task's data root: FUNSD's training_data/ + testing_data/, CORD's or RVL-CDIP's or DocVQA's "
        "train/ (+ val/) + test/ (default: synthetic pages for the task)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = build_parser().parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Paths as quoted YAML: a directory named 2024 or {a,b} stays a string.
    overrides = [*overrides, "--model.path", json.dumps(args.model)]
    if args.data:
        overrides += ["--data.dir", json.dumps(args.data)]
    if args.out:
        overrides += ["--output.dir", json.dumps(args.out)]
    try:
        config = load_finetune_config(args.config, overrides)
        if args.print_config:
            print(config_yaml(config), end="")
            return EXIT_OK
        if not config.data.dir:
            config.data.dir = str(write_synthetic_forms(config))
            if config.task == "classes":
                config.data.classes = config.data.classes or list(DOCUMENT_KINDS)
        elif config.task in ("classes", "questions"):
            fill_missing_words(config)
    except (ValueError, OSError) as error:  # bad config or output directory: one line, no traceback
        return report_bad_config(error)
    code = finetune(config, args.resume)
    results_file = Path(config.output.dir) / RESULTS_FILE
    if code == EXIT_OK and os.environ.get("RANK", "0") == "0" and results_file.is_file():
        results = json.loads(results_file.read_text())
        metric = next(key for key in results if key.startswith("dev_") and key != "dev_history")[4:]
        summary = {"best_step": results["best_step"], f"dev_{metric}": results[f"dev_{metric}"]}
        summary[f"test_{metric}"] = results["test"][metric]
        print(json.dumps(summary))
    return code


if __name__ == "__main__":
    sys.exit(main())
