"""One page and its OCR words -> one training sample: the files of ``layoutlmv3.data.sample_format``.

Boxes are normalised by ``layoutlmv3.page_layout.normalize_box`` (the one definition, shared with fine-tuning and
prediction); a box that cannot belong to the page means the OCR does not fit it (wrong page, wrong scale), so the
page is rejected rather than trained on with wrong positions. Every encoding here is byte-deterministic.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from layoutlmv3 import page_layout
from layoutlmv3.data.sample_format import (
    IMAGE_FILE,
    IMAGE_SIZE,
    META_FILE,
    TOKENIZER_IMAGE_FILE,
    TOKENIZER_IMAGE_SIZE,
    TOKENS_FILE,
    sample_key,
)
from layoutlmv3.page_layout import line_layout
from layoutlmv3.page_sources import resize_page
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer

from .ocr import Word
from .rejects import ABSURD_BOX, NO_WORDS, PageRejected

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
    """`layoutlmv3.page_layout.normalize_box`, a box that cannot belong to the page rejecting the page."""
    try:
        return page_layout.normalize_box(box, width, height)
    except page_layout.BadBox as error:
        raise PageRejected(ABSURD_BOX, str(error)) from None


def encode_png(image: Image.Image, size: int) -> bytes:
    """The page squashed to size x size (bilinear with antialiasing, as LayoutLMv3's processor), as PNG."""
    resized = resize_page(image, size).copy()  # the page processor's one filter (copy: info is reset below)
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
