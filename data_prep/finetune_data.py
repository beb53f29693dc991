"""What a fine-tuning run needs on disk before it starts, made once per node: synthetic pages for the task when no
data is given, and a words file for every page of a document-class or question root that has none (from data_prep
shards, else Tesseract). The ranks of a node start together: the first takes a lock and writes, the others wait
and find the work done."""

from __future__ import annotations

import fcntl
import logging
import time
from pathlib import Path

from layoutlmv3.atomic_files import remove_dead_temporaries_of
from layoutlmv3.finetune.classes import listed_pages
from layoutlmv3.finetune.config import FinetuneConfig
from layoutlmv3.finetune.funsd import SPLITS
from layoutlmv3.finetune.qa import question_images
from layoutlmv3.page_layout import words_file

from .page_words import ocr_missing_words, write_words_from_shards
from .synth import write_class_split, write_cord_split, write_corpus, write_question_split

logger = logging.getLogger(__name__)


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
            logger.info("writing synthetic %s pages under %s", kind, root)
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
            logger.info("synthetic pages written (%.0f s)", time.perf_counter() - started)
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
            logger.info("%d words files written from %s", written, config.data.words_from_shards)
        ocr_missing_words(pages)
