"""One raw webdataset sample (file suffix -> bytes) -> a validated, decoded page.

Runs once per sample in the loader workers, so it decodes each file exactly once and copies nothing it can avoid:
a grayscale page becomes RGB as a read-only broadcast view, not three copied planes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from layoutlmv3.data.sample_format import (
    IMAGE_FILE,
    IMAGE_SIZE,
    META_FILE,
    TOKENIZER_IMAGE_FILE,
    TOKENIZER_IMAGE_SIZE,
    TOKENS_FILE,
)


@dataclass
class PageSample:
    """A decoded page: all content tokens (no specials, no truncation) and both page images."""

    key: str
    input_ids: np.ndarray  # int32 [N]
    bbox: np.ndarray  # int16 [N, 4], 0..1000
    word_ids: np.ndarray  # int32 [N], index into meta["words"]
    image: np.ndarray  # uint8 [IMAGE_SIZE, IMAGE_SIZE, 3]; read-only
    tokenizer_image: np.ndarray  # uint8 [TOKENIZER_IMAGE_SIZE, TOKENIZER_IMAGE_SIZE, 3]; read-only
    meta: dict[str, Any]


def decode_sample(raw: Mapping[str, Any]) -> PageSample:
    """Decode a sample as webdataset groups it (`__key__` plus one entry per file suffix); raises on bad data."""
    missing = [name for name in (IMAGE_FILE, TOKENIZER_IMAGE_FILE, TOKENS_FILE, META_FILE) if name not in raw]
    if missing:
        raise ValueError(f"sample {raw.get('__key__')!r} lacks {missing}")
    input_ids, bbox, word_ids = decode_tokens(raw[TOKENS_FILE])
    return PageSample(
        key=raw["__key__"],
        input_ids=input_ids,
        bbox=bbox,
        word_ids=word_ids,
        image=decode_png(raw[IMAGE_FILE], IMAGE_SIZE),
        tokenizer_image=decode_png(raw[TOKENIZER_IMAGE_FILE], TOKENIZER_IMAGE_SIZE),
        meta=json.loads(raw[META_FILE]),
    )


def decode_tokens(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`tokens.npz` -> (input_ids int32 [N], bbox int16 [N, 4], word_ids int32 [N]), shapes checked."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        input_ids = npz["input_ids"].astype(np.int32, copy=False)
        bbox = npz["bbox"].astype(np.int16, copy=False)
        word_ids = npz["word_ids"].astype(np.int32, copy=False)
    count = len(input_ids)
    if input_ids.ndim != 1 or bbox.shape != (count, 4) or word_ids.shape != (count,):
        raise ValueError(f"inconsistent token arrays: {input_ids.shape}, {bbox.shape}, {word_ids.shape}")
    return input_ids, bbox, word_ids


def decode_png(data: bytes, size: int) -> np.ndarray:
    """A square PNG of `size` px -> uint8 [size, size, 3]; grayscale becomes RGB without copying."""
    with Image.open(io.BytesIO(data), formats=["PNG"]) as image:  # only PNG: never EPS (runs Ghostscript) & co.
        if image.size != (size, size):
            raise ValueError(f"image is {image.size}, expected {size}x{size}")
        if image.mode == "L":
            gray = np.asarray(image)
            return np.broadcast_to(gray[:, :, None], (size, size, 3))
        rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    rgb.flags.writeable = False
    return rgb
