"""The words of a page for fine-tuning and prediction, made where the library only reads them: Tesseract on the
page (one timeout, one image mode for every launcher), or taken back out of data_prep shards, so a collection
already OCR'd for pretraining (RVL-CDIP, say) is fine-tuned on without running Tesseract a second time. Words
files are ``NAME.json`` beside ``NAME.png`` (`layoutlmv3.page_layout.read_words`' format), each written at once
(`layoutlmv3.atomic_files`).

Each shard sample's ``meta.json`` holds its words, their 0..1000 boxes, their line ids and the page's source path
relative to the input root it was built from (`layoutlmv3.data.sample_format`). A page image is matched to the
sample whose source is the longest tail of the image's path (``train/letter/0001.tif`` matches a source
``letter/0001.tif`` or ``train/letter/0001.tif``), page 0, and its words file is written beside it in the format
`layoutlmv3.page_layout.read_words` reads, boxes scaled to the image's own pixel size.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from layoutlmv3.atomic_files import write_bytes
from layoutlmv3.data.remote import tar_files
from layoutlmv3.data.sample_format import MANIFEST_FILE, META_FILE
from layoutlmv3.data.shards import list_shards
from layoutlmv3.json_files import parse_json
from layoutlmv3.page_layout import read_words, to_sample_mode, words_file
from layoutlmv3.page_sources import open_image
from layoutlmv3.tokenizer import MAX_COORD

from .ocr import TesseractOcr, Word
from .rejects import PageRejected

OCR_TIMEOUT = 120.0  # seconds of Tesseract per page


def ocr_words(image: Image.Image) -> list[Word]:
    """Tesseract's words of a page, read as data prep reads pages for pretraining (the default OcrSettings: the
    same resolution, segmentation and boxes in the page's pixels), so a fine-tuned model meets the words it was
    pretrained on. A failure or time-out raises PageRejected."""
    return TesseractOcr(OCR_TIMEOUT).read(Path(), 0, to_sample_mode(image))


def words_of_page(image_path: Path, image: Image.Image, words: Path | None = None) -> list[Word]:
    """The words of a page: from `words` if given, else its words file if there is one, else Tesseract."""
    if words is None and words_file(image_path).is_file():
        words = words_file(image_path)
    return read_words(words) if words is not None else ocr_words(image)


def ocr_missing_words(images: Iterable[Path]) -> int:
    """Tesseract's words for every page that has no words file yet, written beside it (the next run reads them);
    returns how many were written. A page Tesseract cannot read is a ValueError naming it."""
    pending = [image for image in images if not words_file(image).is_file()]
    for number, image in enumerate(pending, 1):
        logging.getLogger("ocr").info("OCR %d/%d: %s", number, len(pending), image)
        with open_image(image) as opened:  # the one page opener: pixel cap, page formats, no FIFO
            try:
                words = ocr_words(opened)
            except PageRejected as error:
                raise ValueError(f"{image}: OCR failed: {error}") from None
        _write_words(image, [{"text": word.text, "box": list(word.box), "line": word.line} for word in words])
    return len(pending)


def _write_words(image: Path, entries: list[dict]) -> None:
    write_bytes(words_file(image), json.dumps({"words": entries}).encode())


def shard_words(shards_dir: str | Path) -> dict[str, dict]:
    """``source -> meta`` of every first page in the shards of `shards_dir` (its manifest's shards, else every
    ``*.tar``); only the small meta members are read, never the images."""
    shards_dir = Path(shards_dir)
    manifest = shards_dir / MANIFEST_FILE
    if manifest.is_file():  # its names checked: plain file names inside shards_dir (ManifestError otherwise)
        shards = [Path(shard.url) for shard in list_shards(manifest)]
    else:
        shards = sorted(shards_dir.glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"{shards_dir}: no data_prep shards (no {MANIFEST_FILE}, no *.tar)")
    pages: dict[str, dict] = {}
    suffix = f".{META_FILE}"
    for shard in shards:
        try:
            with shard.open("rb") as file:  # the one tar reader of shards (layoutlmv3.data.remote): its caps hold
                for name, text in tar_files(file, str(shard), select=lambda name: name.endswith(suffix)):
                    meta = parse_json(text, f"{shard} member {name}")
                    if int(meta.get("page", 0)) == 0:
                        pages[str(meta["source"])] = meta
        except (OSError, tarfile.TarError, AttributeError, KeyError, TypeError, ValueError) as error:  # bad JSON too
            raise ValueError(f"{shard}: not a readable data_prep shard ({type(error).__name__}: {error})") from None
    return pages


def match_source(image: Path, sources: dict[str, dict]) -> dict | None:
    """The meta whose source is the longest tail of `image`'s path (as given, then with links resolved), or None."""
    for path in (image.absolute(), image.resolve()):
        for start in range(len(path.parts)):
            meta = sources.get("/".join(path.parts[start:]))
            if meta is not None:
                return meta
    return None


def write_words_from_shards(shards_dir: str | Path, images: Iterable[Path]) -> int:
    """Write the words file of every image that has none from its shard sample; returns how many were written.
    Raises ValueError naming the images the shards do not hold."""
    pending = [image for image in images if not words_file(image).is_file()]
    if not pending:
        return 0
    sources = shard_words(shards_dir)
    matched = {image: match_source(image, sources) for image in pending}
    missing = [image for image, meta in matched.items() if meta is None]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(pending)} pages without words are not in the shards of {shards_dir} "
            f"(matched by the tail of their path to the samples' source), e.g. {missing[0]}"
        )
    for image, meta in matched.items():
        with open_image(image) as opened:  # header only; the pixel cap and page formats as every page reader
            width, height = opened.size
        entries = [
            {"text": text, "box": _pixels(box, width, height), "line": int(line)}
            for text, box, line in zip(meta["words"], meta["word_boxes"], meta["line_ids"], strict=True)
        ]
        _write_words(image, entries)
    return len(pending)


def _pixels(box: list[int], width: int, height: int) -> list[float]:
    """0..1000 -> pixels, at the middle of the unit (within the page) so normalising again gives the same
    integers back."""
    sizes = (width, height, width, height)
    return [min((value + 0.5) * size / MAX_COORD, size) for value, size in zip(box, sizes, strict=True)]
