"""The labelled pages of a fine-tuning run: train, dev and test, and the label list they are tagged with.

FUNSD's layout has training_data/ and testing_data/: the dev split is carved from training_data (a seeded
fraction); CORD's has train/, dev/ and test/, and its own dev split is used. The entity types come from the
training split unless `data.entity_types` names them; every split is read with the same labels, so a type only
the test split uses is an error naming its file.
"""

from __future__ import annotations

import random
from pathlib import Path

from .config import FinetuneData
from .cord import CORD_SPLITS, cord_entity_types, read_cord_split
from .funsd import SPLITS, Page, bio_labels, entity_types, read_split

FORMATS = ("funsd", "cord")


def split_dev(pages: list[Page], fraction: float, seed: int) -> tuple[list[Page], list[Page]]:
    """(train, dev): a seeded shuffle of the page ids, the first `fraction` (at least one page) held out."""
    ids = sorted(page.id for page in pages)
    random.Random(seed).shuffle(ids)
    dev_ids = set(ids[: max(1, round(len(ids) * fraction))])
    return [p for p in pages if p.id not in dev_ids], [p for p in pages if p.id in dev_ids]


def read_splits(data: FinetuneData, seed: int) -> tuple[tuple[str, ...], dict[str, list[Page]]]:
    """(BIO labels, {"train", "dev", "test": pages}) of data.dir in data.format."""
    if not data.dir:
        raise ValueError("data.dir is not set: a FUNSD-format (or, with data.format cord, CORD-format) root")
    root = Path(data.dir)
    if data.format == "cord":
        train, dev, test = (root / name for name in CORD_SPLITS)
        labels = bio_labels(data.entity_types or cord_entity_types(train))
        pages = {name: read_cord_split(root / name, data.boxes, labels) for name in CORD_SPLITS}
        return labels, {"train": pages["train"], "dev": pages["dev"], "test": pages["test"]}
    labels = bio_labels(data.entity_types or entity_types(root / SPLITS[0]))
    train, dev = split_dev(read_split(root / SPLITS[0], data.boxes, labels), data.dev_fraction, seed)
    return labels, {"train": train, "dev": dev, "test": read_split(root / SPLITS[1], data.boxes, labels)}
