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
import fcntl
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from data_prep.page_words import ocr_missing_words, write_words_from_shards
from data_prep.synth import DOCUMENT_KINDS, write_class_split, write_cord_split, write_corpus, write_question_split
from layoutlmv3.atomic_files import remove_dead_temporaries_of
from layoutlmv3.config_help import add_common_arguments, config_yaml, report_bad_config, settings_help
from layoutlmv3.finetune.classes import listed_pages
from layoutlmv3.finetune.config import (
    FinetuneConfig,
    load_finetune_config,
)
from layoutlmv3.finetune.funsd import SPLITS
from layoutlmv3.finetune.qa import question_images
from layoutlmv3.finetune.train import RESULTS_FILE, finetune
from layoutlmv3.page_layout import words_file
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


def write_synthetic_forms(config: FinetuneConfig) -> Path:
    """Synthetic pages under output.dir/synthetic in data.format's layout (FUNSD forms, or CORD-layout receipts
    with train/dev/test), written once: the ranks of a node start together, so the first takes a lock and writes
    while the others wait, then find them complete."""
    root = Path(config.output.dir) / "synthetic"
    root.mkdir(parents=True, exist_ok=True)
    data, seed = config.data, config.train.seed
    kind = config.task if config.task in ("classes", "questions") else data.format
    asked = f"-{data.synthetic_questions_per_page or 'all'}q" if kind == "questions" else ""
    done = root / f".complete-{kind}{asked}-{data.synthetic_train_pages}-{data.synthetic_test_pages}-{seed}"
    with open(root / ".lock", "w") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        if not done.exists():
            started = time.perf_counter()  # a minute or more for big synthetic splits: say when it starts and ends
            logging.getLogger("synthetic").info("writing synthetic %s pages under %s", kind, root)
            if kind == "questions":  # key -> value questions of the forms, words beside each page
                per_page = data.synthetic_questions_per_page or None
                write_question_split(root / "train", data.synthetic_train_pages, seed=seed, per_page=per_page)
                write_question_split(root / "test", data.synthetic_test_pages, seed=seed + 1, per_page=per_page)
            elif kind == "classes":  # the page templates as document classes, words beside each page
                write_class_split(root / "train", data.synthetic_train_pages, seed=seed)
                write_class_split(root / "test", data.synthetic_test_pages, seed=seed + 1)
            elif kind == "cord":
                dev_pages = max(1, round(data.synthetic_train_pages * data.dev_fraction))
                write_cord_split(root / "train", data.synthetic_train_pages - dev_pages, seed=seed)
                write_cord_split(root / "dev", dev_pages, seed=seed + 2)
                write_cord_split(root / "test", data.synthetic_test_pages, seed=seed + 1)
            else:
                write_corpus(root / SPLITS[0], data.synthetic_train_pages, seed=seed)
                write_corpus(root / SPLITS[1], data.synthetic_test_pages, seed=seed + 1)
            done.touch()
            logging.getLogger("synthetic").info("synthetic pages written (%.0f s)", time.perf_counter() - started)
    return root


def _pages(task: str, root: Path) -> list[Path]:
    """The page images of a document-class or question root (train, val and test splits present)."""
    splits = [name for name in ("train", "val", "test") if (root / name).is_dir() or (root / f"{name}.txt").is_file()]
    if task == "classes":
        return [image for split in splits for image, _ in listed_pages(root / split)]
    return sorted({image for split in splits for image in question_images(root / split)})


def fill_missing_words(config: FinetuneConfig) -> None:
    """Words files for the pages of a document-class or question root that have none: from data_prep shards
    (data.words_from_shards) where given, else Tesseract. The ranks of a node start together: one does it."""
    root = Path(config.data.dir)
    pages = _pages(config.task, root)
    if all(words_file(page).is_file() for page in pages):
        return  # every page has its words: nothing is written (a read-only data root is fine)
    with open(root / ".ocr.lock", "w") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)  # the pages stay; which have words files is read again under the lock
        remove_dead_temporaries_of(words_file(page) for page in pages)  # of a run killed while writing them
        if config.data.words_from_shards:
            written = write_words_from_shards(config.data.words_from_shards, pages)
            logging.getLogger("words").info("%d words files written from %s", written, config.data.words_from_shards)
        ocr_missing_words(pages)


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
