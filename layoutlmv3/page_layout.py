"""A page's words and their geometry, shared by data preparation and prediction: the one `Word`, the one
`normalize_box`, line layout, and the image modes a page is kept in.

Boxes are normalised to 0..1000 by the page size (``int(1000 * x / size)``, as LayoutLMv3's processor does) and
clipped; inverted boxes are reordered. A box that is not 4 finite numbers, or that reaches more than
BOX_MARGIN of the page beyond its edges, means the words do not fit this page (wrong page, wrong scale):
`BadBox`, which data prep turns into a rejected page and fine-tuning into an error naming the file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from layoutlmv3.json_files import read_json_file
from layoutlmv3.tokenizer import MAX_COORD

BOX_LEVELS = ("word", "segment")  # what `model_words` can give as a word's layout position
BOX_MARGIN = 0.1  # fraction of the page a box may overhang an edge before it is absurd (beyond that: refused)
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


@dataclass(frozen=True)
class Word:
    """One OCR word: its text, its box [x0, y0, x1, y1] in pixels of the page, and its line id."""

    text: str
    box: tuple[Any, Any, Any, Any]  # as given; normalize_box validates and normalises it
    line: int


class BadBox(ValueError):
    """A word box that cannot belong to the page (not 4 finite numbers, or far outside it)."""


def normalize_box(box: Sequence[object], width: int, height: int) -> list[int]:
    """Pixel box -> [x0, y0, x1, y1] in 0..1000; raises BadBox for boxes that cannot be fixed."""
    try:
        x0, y0, x1, y1 = (float(value) for value in box)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BadBox(f"box {box!r} is not 4 numbers") from None
    except OverflowError:  # a JSON integer past float range (10**400): exact in Python, no float holds it
        raise BadBox(f"box {str(box)[:80]}... has a coordinate beyond any page") from None
    if not all(math.isfinite(value) for value in (x0, y0, x1, y1)):
        raise BadBox(f"box {box!r} has a non-finite coordinate")
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    if (
        x0 < -BOX_MARGIN * width
        or y0 < -BOX_MARGIN * height
        or x1 > (1 + BOX_MARGIN) * width
        or y1 > (1 + BOX_MARGIN) * height
    ):
        raise BadBox(f"box {list(box)} lies outside the {width}x{height} page")
    return [_scale(x0, width), _scale(y0, height), _scale(x1, width), _scale(y1, height)]


def _scale(value: float, size: int) -> int:
    return min(max(int(MAX_COORD * value / size), 0), MAX_COORD)


def line_layout(lines: Sequence[int], boxes: Sequence[Sequence[int]]) -> tuple[list[int], list[list[int]]]:
    """Dense line ids (0, 1, ... by first appearance) per word, and each line's box: the union of its word boxes."""
    dense: dict[int, int] = {}
    line_boxes: list[list[int]] = []
    line_ids = []
    for line, box in zip(lines, boxes):
        index = dense.setdefault(line, len(dense))
        if index == len(line_boxes):
            line_boxes.append(list(box))
        else:
            union = line_boxes[index]
            line_boxes[index] = [
                min(union[0], box[0]),
                min(union[1], box[1]),
                max(union[2], box[2]),
                max(union[3], box[3]),
            ]
        line_ids.append(index)
    return line_ids, line_boxes


def model_words(
    words: Sequence[Word], width: int, height: int, boxes: str = "segment"
) -> tuple[list[str], list[list[int]]]:
    """What the model reads of a width x height page's OCR words: their stripped texts (empty words dropped) and
    0..1000 boxes, each word's own ("word") or its OCR line's ("segment", as the paper). Raises BadBox."""
    words = [word for word in words if word.text.strip()]
    normalized = [normalize_box(word.box, width, height) for word in words]
    if boxes == "segment":
        line_ids, line_boxes = line_layout([word.line for word in words], normalized)
        normalized = [line_boxes[line] for line in line_ids]
    return [word.text.strip() for word in words], normalized


def to_sample_mode(image: Image.Image) -> Image.Image:
    """A decoded copy in "L" (bilevel/grayscale sources) or "RGB" (everything else), keeping ``info`` (dpi)."""
    converted = image.convert("L" if image.mode in GRAY_MODES else "RGB")
    converted.info = dict(image.info)
    return converted


def words_file(image: Path) -> Path:
    """Where a page's words live for fine-tuning and prediction: NAME.json beside the image NAME.png."""
    return image.with_suffix(".json")


def read_words(path: str | Path) -> list[Word]:
    """Words given as JSON, ``{"words": [{"text": "Date:", "box": [x0, y0, x1, y1], "line": 3}, ...]}`` (or the bare
    list) with pixel boxes; without `line`, each word is its own line. Prediction and document classification
    read OCR words this way."""
    data = read_json_file(path)  # broken JSON: JsonFileError (a ValueError) naming the file
    entries = data.get("words") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        got = f"an object with keys {sorted(data)[:5]}" if isinstance(data, dict) else type(data).__name__
        raise ValueError(f'{path}: expected {{"words": [...]}} or a list of words, got {got}')
    try:
        return [
            Word(_text(entry["text"]), tuple(entry["box"]), int(entry.get("line", index)))
            for index, entry in enumerate(entries)
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f'{path}: each word needs a "text" and a 4-number "box": {error!r}') from error


def _text(value: Any) -> str:
    """A word's text as given: a string, or a number written as one (never null, a list or an object)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"a word's text must be a string, got {value!r}")
