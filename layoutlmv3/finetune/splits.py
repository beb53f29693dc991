"""The labelled pages of a fine-tuning run: train, dev and test, and the label list they are tagged with.

FUNSD's layout has training_data/ and testing_data/: the dev split is carved from training_data (a seeded
fraction); CORD's has train/, dev/ and test/, and its own dev split is used. The entity types come from the
training split unless `data.entity_types` names them; every split is read with the same labels, so a type only
the test split uses is an error naming its file.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .config import FinetuneData
from .cord import CORD_SPLITS, cord_entity_types, read_cord_split
from .funsd import SPLITS, Page, bio_labels, entity_types, read_split

FORMATS = ("funsd", "cord")
T = TypeVar("T")


def split_dev(
    items: list[T], fraction: float, seed: int, key: Callable[[T], str] = lambda item: item.id
) -> tuple[list[T], list[T]]:
    """(train, dev): a seeded shuffle of the distinct keys (page ids by default), the first `fraction` (at least
    one) held out with every item that has them (questions about one page stay on one side)."""
    keys = sorted({key(item) for item in items})
    random.Random(seed).shuffle(keys)
    held = set(keys[: max(1, round(len(keys) * fraction))])
    return [item for item in items if key(item) not in held], [item for item in items if key(item) in held]


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
