"""CORD-format receipts (clovaai/cord: ``{train,dev,test}/image/NAME.png`` + ``{split}/json/NAME.json``) -> the
same `Page` as FUNSD's reader, so fine-tuning, evaluation and prediction take either.

Each ``valid_line`` is an entity whose ``category`` is its type (CORD v2's 30 fields: menu.nm, menu.price,
total.total_price, ...); its words are tagged B-/I- like FUNSD's entities. Word boxes are the extent of the
annotated quads (some CORD quads list their corners out of order or reach past the image: the extent, clamped to
the page, is taken); a segment box is the union of the line's words, the counterpart of FUNSD's entity box.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from layoutlmv3.json_files import read_json_file
from layoutlmv3.page_layout import BadBox, normalize_box
from layoutlmv3.page_sources import open_image

from .funsd import BOX_LEVELS, Page, bio_labels, image_for

CORD_SPLITS = ("train", "dev", "test")


def cord_entity_types(split_dir: str | Path) -> tuple[str, ...]:
    """The categories the split's receipts use (upper case), in `bio_labels` order."""
    found = {_category(line, path) for path in _annotations(Path(split_dir)) for line in read_valid_lines(path)}
    return tuple(label.split("-", 1)[1] for label in bio_labels(found)[1::2])


def read_cord_split(split_dir: str | Path, boxes: str, labels: Sequence[str]) -> list[Page]:
    split_dir = Path(split_dir)
    return [
        read_cord_page(path, image_for(split_dir / "image", path.stem), boxes, labels)
        for path in _annotations(split_dir)
    ]


def read_cord_page(json_path: Path, image_path: Path, boxes: str, labels: Sequence[str]) -> Page:
    if boxes not in BOX_LEVELS:
        raise ValueError(f"boxes must be one of {BOX_LEVELS}, got {boxes!r}")
    with open_image(image_path) as image:  # header only; a page over the pixel cap is refused naming it
        width, height = image.size
    label_ids = {label: index for index, label in enumerate(labels)}
    known = [label[2:] for label in labels if label.startswith("B-")]
    words, word_boxes, word_labels = [], [], []
    for number, line in enumerate(read_valid_lines(json_path)):
        kind = _category(line, json_path)
        if kind not in known:
            raise ValueError(
                f"{json_path}: valid_line {number} has category {line['category']!r}, which is not one of "
                f"{', '.join(kind.lower() for kind in known)}"
            )
        words_of_line = line.get("words", [])
        if not isinstance(words_of_line, list) or not all(isinstance(word, dict) for word in words_of_line):
            raise ValueError(f'{json_path}: valid_line {number}: "words" must be a list of objects')
        line_words = [word for word in words_of_line if str(word.get("text", "")).strip()]
        try:
            extents = [_extent(word["quad"], width, height) for word in line_words]
        except (KeyError, TypeError, ValueError, OverflowError) as error:
            raise ValueError(
                f"{json_path}: valid_line {number}: a word without a quad of numbers ({error!r})"
            ) from None
        segment = [min(e[0] for e in extents), min(e[1] for e in extents), max(e[2] for e in extents),
                   max(e[3] for e in extents)] if extents else None  # fmt: skip
        for position, (word, extent) in enumerate(zip(line_words, extents, strict=True)):
            try:
                word_boxes.append(normalize_box(segment if boxes == "segment" else extent, width, height))
            except BadBox as error:
                raise ValueError(f"{json_path}: valid_line {number} word {word['text']!r}: {error}") from None
            words.append(str(word["text"]).strip())
            word_labels.append(label_ids[f"{'B' if position == 0 else 'I'}-{kind}"])
    return Page(json_path.stem, image_path, words, word_boxes, word_labels)


def read_valid_lines(path: Path) -> list[dict]:
    """The annotated lines of a CORD receipt; a file that is not JSON, or not ``{"valid_line": [{...}, ...]}``, is a
    ValueError naming it."""
    data = read_json_file(path)  # broken JSON: JsonFileError (a ValueError) naming the file
    lines = data.get("valid_line") if isinstance(data, dict) else None
    if not isinstance(lines, list) or not all(isinstance(line, dict) for line in lines):
        raise ValueError(f'{path}: expected a CORD annotation {{"valid_line": [objects]}}')
    return lines


def _category(line: dict, path: Path) -> str:
    category = line.get("category")
    if not isinstance(category, str) or not category.strip():
        raise ValueError(f"{path}: a valid_line has no 'category'")
    return category.strip().upper()


def _extent(quad: dict, width: int, height: int) -> list[int]:
    """The quad's bounding box, clamped to the page."""
    xs = [min(max(int(quad[f"x{i}"]), 0), width) for i in range(1, 5)]
    ys = [min(max(int(quad[f"y{i}"]), 0), height) for i in range(1, 5)]
    return [min(xs), min(ys), max(xs), max(ys)]


def _annotations(split_dir: Path) -> list[Path]:
    paths = sorted(path for path in (split_dir / "json").glob("*.json") if not path.name.startswith("."))
    if not paths:
        raise FileNotFoundError(f"{split_dir} has no json/*.json (expected the CORD layout: image/ and json/)")
    return paths
