"""FUNSD-format pages (`images/NAME.png` + `annotations/NAME.json`) -> words, 0..1000 boxes and BIO labels.

The entity types come from the data (`entity_types`: FUNSD's header/question/answer, or a user's own forms with
other types); an entity of type X becomes B-X on its first word and I-X on the rest; `other` is O. The label list
(`bio_labels`) is saved with the fine-tuned model as its id2label, so prediction needs nothing else.
Boxes are word-level or segment-level; segment boxes are each entity's annotated box, i.e. the annotated
grouping of words into entities, which is what the LayoutLMv3 paper fine-tuned on (a model applied to raw OCR
needs a segmenter that makes comparable groups). Words whose text is empty or blank are dropped: the tokenizer
would give them no token, so they could neither be labelled nor predicted.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from layoutlmv3.json_files import read_json_file
from layoutlmv3.page_layout import BOX_LEVELS, BadBox, normalize_box
from layoutlmv3.page_sources import IMAGE_SUFFIXES, open_image

ENTITY_TYPES = ("HEADER", "QUESTION", "ANSWER")  # FUNSD's, in the order its label ids have always had
OUTSIDE = "OTHER"  # the entity type that is no entity (O)


def bio_labels(entity_types: Sequence[str]) -> tuple[str, ...]:
    """O, then B-X and I-X for each type: FUNSD's three first in FUNSD's order, any others sorted."""
    types = {kind.upper() for kind in entity_types} - {OUTSIDE}
    ordered = [kind for kind in ENTITY_TYPES if kind in types] + sorted(types - set(ENTITY_TYPES))
    return ("O", *(f"{prefix}-{kind}" for kind in ordered for prefix in ("B", "I")))


LABELS = bio_labels(ENTITY_TYPES)  # FUNSD's seven
LABEL_IDS = {label: index for index, label in enumerate(LABELS)}
SPLITS = ("training_data", "testing_data")


@dataclass
class Page:
    """One annotated page; `boxes` on the 0..1000 grid, `labels` indices into LABELS (one per word)."""

    id: str
    image_path: Path
    words: list[str]
    boxes: list[list[int]]
    labels: list[int]


def entity_types(split_dir: str | Path) -> tuple[str, ...]:
    """The entity types the annotations of a split use (upper case, OTHER included), in `bio_labels` order."""
    found = set()
    for path in _annotations(Path(split_dir)):
        for entity in read_form(path):
            found.add(_entity_kind(entity, path, None))
    return tuple(label.split("-", 1)[1] for label in bio_labels(found)[1::2]) + ((OUTSIDE,) if OUTSIDE in found else ())


def read_split(split_dir: str | Path, boxes: str = "segment", labels: Sequence[str] = LABELS) -> list[Page]:
    """Every page of one split directory (holding images/ and annotations/), sorted by name; `labels` indexes
    the BIO tags (an entity type outside them is an error naming the file)."""
    split_dir = Path(split_dir)
    return [
        read_page(path, image_for(split_dir / "images", path.stem), boxes, labels) for path in _annotations(split_dir)
    ]


def _annotations(split_dir: Path) -> list[Path]:
    annotations = sorted(path for path in (split_dir / "annotations").glob("*.json") if not path.name.startswith("."))
    if not annotations:
        raise FileNotFoundError(f"{split_dir} has no annotations/*.json (expected the FUNSD layout)")
    return annotations


def read_page(annotation_path: Path, image_path: Path, boxes: str = "segment", labels: Sequence[str] = LABELS) -> Page:
    """Words in annotation order (entity by entity), the way FUNSD readers order them."""
    if boxes not in BOX_LEVELS:
        raise ValueError(f"boxes must be one of {BOX_LEVELS}, got {boxes!r}")
    with open_image(image_path) as image:  # header only; a page over the pixel cap is refused naming it
        width, height = image.size
    form = read_form(annotation_path)
    label_ids = {label: index for index, label in enumerate(labels)}
    known = tuple(label[2:] for label in labels if label.startswith("B-"))
    words, word_boxes, word_labels = [], [], []
    for entity in form:
        kind = _entity_kind(entity, annotation_path, known)
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
            tag = "O" if kind == OUTSIDE else f"{'B' if position == 0 else 'I'}-{kind}"
            word_labels.append(label_ids[tag])
    return Page(annotation_path.stem, image_path, words, word_boxes, word_labels)


def read_form(path: Path) -> list[dict]:
    """The entities of a FUNSD annotation file; a file that is not JSON, or not ``{"form": [{...}, ...]}`` with
    each entity's "words" a list of objects, is a ValueError naming it."""
    data = read_json_file(path)  # broken JSON: JsonFileError (a ValueError) naming the file
    form = data.get("form") if isinstance(data, dict) else None
    if not isinstance(form, list):
        raise ValueError(f'{path}: expected a FUNSD annotation {{"form": [entities]}}')
    for number, entity in enumerate(form):
        words = entity.get("words") if isinstance(entity, dict) else None
        if not isinstance(words, list) or not all(isinstance(word, dict) for word in words):
            raise ValueError(f'{path}: entity {number} is not an object with a "words" list of objects')
        if not all(isinstance(word.get("text"), str) and "box" in word for word in words) or "box" not in entity:
            raise ValueError(f'{path}: entity {number} or one of its words has no "box", or a word no "text" string')
    return form


def _entity_kind(entity: dict, annotation_path: Path, known: Sequence[str] | None) -> str:
    """The entity's type in upper case; an entity without a label, or (with `known` types) one of another type,
    is an error naming the file and entity (turning it into O would silently teach the model that it is
    nothing)."""
    label = entity.get("label")
    expected = ", ".join(kind.lower() for kind in (*(known or ()), OUTSIDE))
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"{annotation_path}: entity {entity.get('id')} has no 'label' (expected one of {expected})")
    kind = label.strip().upper()
    if known is not None and kind not in (*known, OUTSIDE):
        raise ValueError(
            f"{annotation_path}: entity {entity.get('id')} has label {label!r}, which is not one of {expected}"
        )
    return kind


def image_for(folder: Path, stem: str) -> Path:
    """The page image named like an annotation (any page suffix), as FUNSD and CORD pair them. The stem is matched
    exactly: as a glob pattern, 'a[1]' matched a1.png and 'b' matched b.notes.txt (a wrong page, silently)."""
    matches = sorted(
        path
        for path in folder.glob(f"{glob.escape(stem)}.*")
        if path.stem == stem and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )
    if not matches:
        raise FileNotFoundError(f"no image for annotation {stem} under {folder}")
    return matches[0]
