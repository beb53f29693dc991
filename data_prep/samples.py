"""One page and its OCR words -> one training sample: the files of ``layoutlmv3.data.sample_format``.

Boxes are normalised to 0..1000 by the page size (``int(1000 * x / size)``, as LayoutLMv3's processor does) and
clipped; inverted boxes are reordered. A box that is not 4 finite numbers, or that reaches more than
BOX_MARGIN of the page beyond its edges, means the OCR does not fit this page (wrong page, wrong scale), so the
page is rejected rather than trained on with wrong positions. Every encoding here is byte-deterministic.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from layoutlmv3.data.sample_format import (
    IMAGE_FILE,
    IMAGE_SIZE,
    META_FILE,
    TOKENIZER_IMAGE_FILE,
    TOKENIZER_IMAGE_SIZE,
    TOKENS_FILE,
    sample_key,
)
from layoutlmv3.tokenizer import MAX_COORD, LayoutLMv3Tokenizer

from .ocr import Word
from .rejects import ABSURD_BOX, NO_WORDS, PageRejected

BOX_MARGIN = 0.1  # fraction of the page a box may overhang an edge before it is absurd (beyond that: rejected)
PNG_COMPRESS_LEVEL = 6
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # constant member timestamps make tokens.npz reproducible


@dataclass(frozen=True)
class Sample:
    """A page ready for a shard: its tar key and the bytes of each of its files."""

    key: str
    page: int
    files: dict[str, bytes]


def build_sample(
    source: str, page: int, image: Image.Image, words: Sequence[Word], tokenizer: LayoutLMv3Tokenizer
) -> Sample:
    """The sample of one page; raises PageRejected (no_words, absurd_box) when the page cannot make one."""
    kept = [word for word in words if word.text.strip()]
    if not kept:
        raise PageRejected(NO_WORDS, f"{len(words)} OCR words, none with visible text")
    width, height = image.size
    texts = [word.text.strip() for word in kept]
    boxes = [normalize_box(word.box, width, height) for word in kept]
    line_ids, line_boxes = line_layout([word.line for word in kept], boxes)
    input_ids, bbox, word_ids = tokenizer.tokenize_words(texts, boxes)
    meta = {
        "words": texts,
        "word_boxes": boxes,
        "line_ids": line_ids,
        "line_boxes": line_boxes,
        "page_size": [width, height],
        "source": source,
        "page": page,
        "tokenizer": tokenizer.fingerprint,
    }
    tokens = {
        "input_ids": np.asarray(input_ids, dtype=np.int32),
        "bbox": np.asarray(bbox, dtype=np.int16).reshape(-1, 4),
        "word_ids": np.asarray(word_ids, dtype=np.int32),
    }
    files = {
        IMAGE_FILE: encode_png(image, IMAGE_SIZE),
        TOKENIZER_IMAGE_FILE: encode_png(image, TOKENIZER_IMAGE_SIZE),
        TOKENS_FILE: encode_npz(tokens),
        META_FILE: json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
    }
    return Sample(sample_key(source, page), page, files)


def normalize_box(box: Sequence[object], width: int, height: int) -> list[int]:
    """Pixel box -> [x0, y0, x1, y1] in 0..1000; raises PageRejected(absurd_box) for boxes that cannot be fixed."""
    try:
        x0, y0, x1, y1 = (float(value) for value in box)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PageRejected(ABSURD_BOX, f"box {box!r} is not 4 numbers") from None
    if not all(math.isfinite(value) for value in (x0, y0, x1, y1)):
        raise PageRejected(ABSURD_BOX, f"box {box!r} has a non-finite coordinate")
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    if (
        x0 < -BOX_MARGIN * width
        or y0 < -BOX_MARGIN * height
        or x1 > (1 + BOX_MARGIN) * width
        or y1 > (1 + BOX_MARGIN) * height
    ):
        raise PageRejected(ABSURD_BOX, f"box {list(box)} lies outside the {width}x{height} page")
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


def encode_png(image: Image.Image, size: int) -> bytes:
    """The page squashed to size x size (bilinear with antialiasing, as LayoutLMv3's processor), as PNG."""
    resized = image.resize((size, size), Image.Resampling.BILINEAR)
    resized.info = {}  # no ICC profile, dpi or transparency carried over from the scan: same bytes for same pixels
    buffer = io.BytesIO()
    resized.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def encode_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz that ``np.load`` reads, with fixed member timestamps (``np.savez`` stamps the current time)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, array in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
            member.compress_type = zipfile.ZIP_DEFLATED
            member.create_system = 3  # the Unix value, so archives match whichever OS writes them
            array_bytes = io.BytesIO()
            np.lib.format.write_array(array_bytes, array, allow_pickle=False)
            archive.writestr(member, array_bytes.getvalue())
    return buffer.getvalue()
