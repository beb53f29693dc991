"""One raw webdataset sample (file suffix -> bytes) -> a validated, decoded page.

Runs once per sample in the loader workers, so it decodes each file exactly once and copies nothing it can avoid:
a grayscale page becomes RGB as a read-only broadcast view, not three copied planes.

Shards are data from elsewhere: every member is checked against the sample format before anything downstream
indexes with it (a word id past the page's words, a box coordinate past 1000, a line id past its line boxes would
crash collation or the model, killing the run instead of costing one sample). Anything else is `BadSample`, naming
the sample and member; array sizes are read from the .npy header and capped before any allocation.
"""

from __future__ import annotations

import io
import math
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from layoutlmv3.data.sample_format import (
    IMAGE_FILE,
    IMAGE_SIZE,
    META_FILE,
    SAMPLE_FILES,
    TOKENIZER_IMAGE_FILE,
    TOKENIZER_IMAGE_SIZE,
    TOKENS_FILE,
)
from layoutlmv3.json_files import parse_json
from layoutlmv3.tokenizer import MAX_COORD

MAX_PAGE_TOKENS = 1 << 20  # content tokens of one page; data prep's pages have thousands at most
TOKEN_ARRAYS = ("input_ids", "bbox", "word_ids")
MAX_TOKEN_ID = 2**31 - 1
# what the decoders of a member's bytes raise for bytes that are not that member (zip, npy, PNG, zlib, Pillow)
DECODE_ERRORS = (
    ValueError,
    OSError,
    EOFError,
    SyntaxError,
    zlib.error,
    zipfile.BadZipFile,
    NotImplementedError,
    RuntimeError,
    struct.error,
    Image.DecompressionBombError,
)


class BadSample(ValueError):
    """A shard sample that is not a page as data prep writes it; the message names the sample and its member."""


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
    """Decode a sample as webdataset groups it (`__key__` plus one entry per file suffix); BadSample on bad data."""
    key = raw.get("__key__")
    if not isinstance(key, str):
        raise BadSample(f"sample key {key!r} is not a string")
    missing = [name for name in SAMPLE_FILES if name not in raw]
    if missing:
        raise BadSample(f"sample {key!r} lacks {missing}")
    if not_bytes := [name for name in SAMPLE_FILES if not isinstance(raw[name], bytes | bytearray)]:
        raise BadSample(f"sample {key!r}: {not_bytes} are not file contents")
    input_ids, bbox, word_ids = _member(key, TOKENS_FILE, lambda: decode_tokens(raw[TOKENS_FILE]))
    meta = _member(key, META_FILE, lambda: decode_meta(raw[META_FILE]))
    if word_ids.size and int(word_ids.max()) >= len(meta["words"]):
        raise BadSample(
            f"sample {key!r} {TOKENS_FILE}: word id {int(word_ids.max())} past its {len(meta['words'])} words"
        )
    return PageSample(
        key=key,
        input_ids=input_ids,
        bbox=bbox,
        word_ids=word_ids,
        image=_member(key, IMAGE_FILE, lambda: decode_png(raw[IMAGE_FILE], IMAGE_SIZE)),
        tokenizer_image=_member(
            key, TOKENIZER_IMAGE_FILE, lambda: decode_png(raw[TOKENIZER_IMAGE_FILE], TOKENIZER_IMAGE_SIZE)
        ),
        meta=meta,
    )


def _member(key: str, name: str, decode: Any) -> Any:
    """`decode()`, its failure on bad bytes turned into a BadSample naming the sample and member."""
    try:
        return decode()
    except BadSample:
        raise
    except DECODE_ERRORS as error:
        raise BadSample(f"sample {key!r} {name}: {type(error).__name__}: {str(error)[:300]}") from None


def decode_tokens(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`tokens.npz` -> (input_ids int32 [N], bbox int16 [N, 4], word_ids int32 [N]): dtypes, shapes and value
    ranges checked (ids >= 0, coordinates 0..MAX_COORD) before the casts, so nothing wraps around."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        input_ids, bbox, word_ids = (_npy_member(archive, name) for name in TOKEN_ARRAYS)
    count = len(input_ids) if input_ids.ndim == 1 else -1
    if count < 0 or bbox.shape != (count, 4) or word_ids.shape != (count,):
        raise ValueError(f"inconsistent token arrays: {input_ids.shape}, {bbox.shape}, {word_ids.shape}")
    if count:
        if int(input_ids.min()) < 0 or int(input_ids.max()) > MAX_TOKEN_ID:
            raise ValueError(f"token ids outside 0..{MAX_TOKEN_ID}: [{int(input_ids.min())}, {int(input_ids.max())}]")
        if int(bbox.min()) < 0 or int(bbox.max()) > MAX_COORD:
            raise ValueError(f"box coordinates outside 0..{MAX_COORD}: [{int(bbox.min())}, {int(bbox.max())}]")
        if int(word_ids.min()) < 0:
            raise ValueError(f"negative word id {int(word_ids.min())}")
    return (
        input_ids.astype(np.int32, copy=False),
        bbox.astype(np.int16, copy=False),
        word_ids.astype(np.int32, copy=False),
    )


def _npy_member(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    """One integer array of the .npz, its header checked (dtype, size) before its data is read or allocated."""
    try:
        info = archive.getinfo(f"{name}.npy")
    except KeyError:
        raise ValueError(f"no array {name!r}") from None
    limit = MAX_PAGE_TOKENS * 4 * 8 + 4096  # the largest array (bbox) as int64, plus its header
    if info.file_size > limit:
        raise ValueError(f"array {name!r} is {info.file_size} bytes, over the {limit}-byte cap of a page")
    with archive.open(info) as member:
        stream = io.BytesIO(member.read(limit + 1))
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"array {name!r} has .npy format version {version}")
    if dtype.kind not in "iu" or dtype.itemsize > 8:
        raise ValueError(f"array {name!r} has dtype {dtype}, expected integers")
    if len(shape) > 2 or math.prod(shape) > MAX_PAGE_TOKENS * 4:
        raise ValueError(f"array {name!r} has shape {shape}")
    body = stream.read()
    if len(body) != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"array {name!r}: {len(body)} data bytes for shape {shape} of {dtype}")
    return np.frombuffer(body, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def decode_meta(data: bytes) -> dict[str, Any]:
    """`meta.json` -> its dict, with what the loader and collation read checked: words (str), one line id per
    word indexing line_boxes, boxes of 4 ints in 0..MAX_COORD, tokenizer a string."""
    meta = parse_json(data, META_FILE)
    if not isinstance(meta, dict):
        raise ValueError(f"expected an object, got {type(meta).__name__}")
    words = meta.get("words")
    if not isinstance(words, list) or not all(isinstance(word, str) for word in words):
        raise ValueError("'words' must be a list of strings")
    line_boxes = _boxes(meta.get("line_boxes"), "line_boxes")
    if "word_boxes" in meta and len(_boxes(meta["word_boxes"], "word_boxes")) != len(words):
        raise ValueError(f"'word_boxes' must hold one box per word ({len(words)})")
    line_ids = _integers(meta.get("line_ids"), "line_ids")
    if len(line_ids) != len(words):
        raise ValueError(f"'line_ids' must hold one id per word ({len(words)}), has {len(line_ids)}")
    if line_ids.size and (int(line_ids.min()) < 0 or int(line_ids.max()) >= len(line_boxes)):
        raise ValueError(f"'line_ids' must index the {len(line_boxes)} line_boxes")
    if not isinstance(meta.get("tokenizer", ""), str):
        raise ValueError("'tokenizer' must be a string")
    return meta


def _integers(value: Any, name: str) -> np.ndarray:
    if not isinstance(value, list):
        raise ValueError(f"{name!r} must be a list of integers")
    array = np.asarray(value) if value else np.zeros(0, dtype=np.int64)
    if array.dtype.kind not in "iu" or array.ndim != 1:  # bools, floats, strings, big ints (object) and nesting
        raise ValueError(f"{name!r} must be a list of integers")
    return array


def _boxes(value: Any, name: str) -> np.ndarray:
    if not isinstance(value, list) or not all(isinstance(box, list) and len(box) == 4 for box in value):
        raise ValueError(f"{name!r} must be a list of [x0, y0, x1, y1]")
    array = np.asarray(value) if value else np.zeros((0, 4), dtype=np.int64)
    if (
        array.dtype.kind not in "iu"
        or array.ndim != 2
        or (array.size and not 0 <= array.min() <= array.max() <= MAX_COORD)
    ):
        raise ValueError(f"{name!r} must hold integer coordinates in 0..{MAX_COORD}")
    return array


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
