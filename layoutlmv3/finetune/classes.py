"""Pages labelled with a document class (RVL-CDIP's layout): a folder per class, or an index file of
``relative/path label`` lines, with each page's OCR words in a JSON beside it.

Layout of a root: ``train/`` and ``test/`` (and ``val/``, used as the dev split when present), each either with
one sub-folder per class holding the page images, or with an index file ``SPLIT.txt`` (RVL-CDIP's
``labels/train.txt`` style: an image path relative to the root, a space, the class name or number). The words of
``page.png`` are in ``page.json`` (`page_layout.read_words`' format: text + pixel box + line); launch/finetune.py
writes them with Tesseract for images that have none. The class list comes from the training split (sorted names)
unless given, and travels with the model as its id2label. An index line's path must stay inside the root
(`layoutlmv3.data_roots`): a line reaching out of it is refused naming the index file and line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from layoutlmv3.data_roots import inside_root
from layoutlmv3.page_layout import BadBox, model_words, read_words, words_file
from layoutlmv3.page_sources import IMAGE_SUFFIXES, open_image


@dataclass
class ClassifiedPage:
    """One page: its words and 0..1000 boxes (line boxes for "segment") and its class index."""

    id: str
    image_path: Path
    words: list[str]
    boxes: list[list[int]]
    label: int


def listed_pages(split_dir: Path) -> list[tuple[Path, str]]:
    """(image, class name) of a split: from its index file SPLIT.txt if present, else its class folders."""
    index = split_dir.parent / f"{split_dir.name}.txt"
    if index.is_file():
        entries = []
        for number, line in enumerate(_index_lines(index), 1):
            if line.strip():
                path, _, label = line.strip().rpartition(" ")
                path = path.rstrip()  # spaces (or a tab) before the label are no part of the file name
                if not path:
                    raise ValueError(f"{index}:{number}: expected 'relative/path label', got {line!r}")
                entries.append((inside_root(split_dir.parent, path, f"{index}:{number}", beside=words_file), label))
        return entries
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir}: no such split (expected a folder per class, or {index.name})")
    pages = []
    for folder in sorted(path for path in split_dir.iterdir() if path.is_dir() and not path.name.startswith(".")):
        images = [  # hidden files (macOS's ._page.png, temporaries) are not pages, as in data prep
            image
            for image in sorted(folder.iterdir())
            if image.suffix.lower() in IMAGE_SUFFIXES and not image.name.startswith(".")
        ]
        if not images:  # else the class would vanish from the model without a word
            raise ValueError(f"{folder}: a class folder without page images ({' '.join(sorted(IMAGE_SUFFIXES))})")
        pages += [(image, folder.name) for image in images]
    return pages


def _index_lines(index: Path) -> list[str]:
    """The lines of an index file, read as UTF-8 whatever the locale; other bytes are a ValueError naming the line."""
    data = index.read_bytes()
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(f"{index}:{line}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def class_names(split_dir: str | Path) -> tuple[str, ...]:
    """The classes the split uses, sorted (numbers by value, as RVL-CDIP's 0..15)."""
    names = {label for _, label in listed_pages(Path(split_dir))}
    if not names:
        raise ValueError(f"{split_dir} has no labelled pages")
    return tuple(sorted(names, key=lambda name: (not name.isdigit(), int(name) if name.isdigit() else 0, name)))


def read_class_split(split_dir: str | Path, classes: Sequence[str], boxes: str = "segment") -> list[ClassifiedPage]:
    """Every page of a split with its words (a page whose class is not in `classes` is an error naming it)."""
    ids = {name: index for index, name in enumerate(classes)}
    pages = []
    for image, label in listed_pages(Path(split_dir)):
        if label not in ids:
            raise ValueError(f"{image}: class {label!r} is not one of {', '.join(classes)}")
        pages.append(read_classified_page(image, ids[label], boxes))
    if not pages:
        raise ValueError(f"{split_dir} has no labelled pages")
    return pages


def read_classified_page(image: Path, label: int, boxes: str = "segment") -> ClassifiedPage:
    words, normalized = page_words(image, boxes)
    return ClassifiedPage(str(image), image, words, normalized, label)  # unique, whatever the folder


def page_words(image: Path, boxes: str = "segment") -> tuple[list[str], list[list[int]]]:
    """A page's words from NAME.json beside its image, and their 0..1000 boxes (each OCR line's box for
    "segment"): how document classification and question answering read their pages."""
    source = words_file(image)
    if not source.is_file():
        raise FileNotFoundError(f"{image} has no words file {source.name} (launch/finetune.py runs OCR for it)")
    with open_image(image) as opened:  # header only; a page over the pixel cap is refused naming it
        width, height = opened.size
    try:
        return model_words(read_words(source), width, height, boxes)
    except BadBox as error:
        raise ValueError(f"{source}: {error}") from None
