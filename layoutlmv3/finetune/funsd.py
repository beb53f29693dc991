"""FUNSD-format pages (`images/NAME.png` + `annotations/NAME.json`) -> words, 0..1000 boxes and BIO labels.

Entities labelled header/question/answer become B-X on their first word and I-X on the rest; `other` is O.
Boxes are word-level or segment-level; segment boxes are each entity's annotated box, i.e. the annotated
grouping of words into entities, which is what the LayoutLMv3 paper fine-tuned on (a model applied to raw OCR
needs a segmenter that makes comparable groups). Words whose text is empty or blank are dropped: the tokenizer
would give them no token, so they could neither be labelled nor predicted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from layoutlmv3.page_layout import BadBox, normalize_box

ENTITY_TYPES = ("HEADER", "QUESTION", "ANSWER")
LABELS = ("O", *(f"{prefix}-{kind}" for kind in ENTITY_TYPES for prefix in ("B", "I")))
LABEL_IDS = {label: index for index, label in enumerate(LABELS)}
KNOWN_LABELS = ", ".join(kind.lower() for kind in (*ENTITY_TYPES, "OTHER"))
BOX_LEVELS = ("word", "segment")
SPLITS = ("training_data", "testing_data")


@dataclass
class Page:
    """One annotated page; `boxes` on the 0..1000 grid, `labels` indices into LABELS (one per word)."""

    id: str
    image_path: Path
    words: list[str]
    boxes: list[list[int]]
    labels: list[int]


def read_split(split_dir: str | Path, boxes: str = "segment") -> list[Page]:
    """Every page of one split directory (holding images/ and annotations/), sorted by name."""
    split_dir = Path(split_dir)
    annotations = sorted((split_dir / "annotations").glob("*.json"))
    if not annotations:
        raise FileNotFoundError(f"{split_dir} has no annotations/*.json (expected the FUNSD layout)")
    return [read_page(path, _image_for(split_dir, path.stem), boxes) for path in annotations]


def read_page(annotation_path: Path, image_path: Path, boxes: str = "segment") -> Page:
    """Words in annotation order (entity by entity), the way FUNSD readers order them."""
    if boxes not in BOX_LEVELS:
        raise ValueError(f"boxes must be one of {BOX_LEVELS}, got {boxes!r}")
    with Image.open(image_path) as image:
        width, height = image.size
    form = json.loads(annotation_path.read_text(encoding="utf-8"))["form"]
    words, word_boxes, labels = [], [], []
    for entity in form:
        kind = _entity_kind(entity, annotation_path)
        entity_words = [word for word in entity["words"] if word["text"].strip()]
        for position, word in enumerate(entity_words):
            words.append(word["text"].strip())
            box = entity["box"] if boxes == "segment" else word["box"]
            try:
                word_boxes.append(normalize_box(box, width, height))
            except BadBox as error:
                raise ValueError(
                    f"{annotation_path}: entity {entity.get('id')} word {word['text']!r}: {error}"
                ) from None
            if kind in ENTITY_TYPES:
                labels.append(LABEL_IDS[f"{'B' if position == 0 else 'I'}-{kind}"])
            else:
                labels.append(LABEL_IDS["O"])
    return Page(annotation_path.stem, image_path, words, word_boxes, labels)


def _entity_kind(entity: dict, annotation_path: Path) -> str:
    """HEADER, QUESTION, ANSWER or OTHER; an entity without a label, or with another one, is an error naming the
    file and entity (turning it into O would silently teach the model that it is nothing)."""
    label = entity.get("label")
    if not isinstance(label, str):
        raise ValueError(
            f"{annotation_path}: entity {entity.get('id')} has no 'label' (expected one of {KNOWN_LABELS})"
        )
    if label.upper() not in (*ENTITY_TYPES, "OTHER"):
        raise ValueError(
            f"{annotation_path}: entity {entity.get('id')} has label {label!r}, which is not one of {KNOWN_LABELS}"
        )
    return label.upper()


def _image_for(split_dir: Path, stem: str) -> Path:
    matches = sorted((split_dir / "images").glob(f"{stem}.*"))
    if not matches:
        raise FileNotFoundError(f"no image for annotation {stem} under {split_dir / 'images'}")
    return matches[0]
