"""Shards and their manifest written as data_prep writes them, from random pages: the loader tests' data (shared by
the local, remote, manifest, hostile-source and runtime-fault tests)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from layoutlmv3.checksums import file_digest
from layoutlmv3.data.sample_format import (
    IMAGE_FILE,
    IMAGE_SIZE,
    MANIFEST_FILE,
    MANIFEST_FORMAT_VERSION,
    META_FILE,
    SHARD_PATTERN,
    TOKENIZER_IMAGE_FILE,
    TOKENIZER_IMAGE_SIZE,
    TOKENS_FILE,
    sample_key,
)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def page_members(rng: np.random.Generator, key: str, length: int, mode: str = "L") -> dict[str, bytes | str]:
    """One sample's tar members: blocky random images (small PNGs), random tokens in lines of words."""
    words = max(length // 2, 1)
    word_ids = np.sort(rng.integers(0, words, length)).astype(np.int32)
    line_ids = [word // 5 for word in range(words)]
    line_boxes = rng.integers(0, 1001, (line_ids[-1] + 1, 4)).tolist()
    word_boxes = rng.integers(0, 1001, (words, 4))
    tokens = io.BytesIO()
    np.savez(
        tokens,
        input_ids=rng.integers(5, 50_000, length).astype(np.int32),
        bbox=word_boxes[word_ids].astype(np.int16),
        word_ids=word_ids,
    )
    channels = () if mode == "L" else (3,)
    blocks = rng.integers(0, 256, (14, 14, *channels), dtype=np.uint8)
    image = blocks.repeat(IMAGE_SIZE // 14, 0).repeat(IMAGE_SIZE // 14, 1)
    meta = {
        "words": [f"w{i}" for i in range(words)],
        "word_boxes": word_boxes.tolist(),
        "line_ids": line_ids,
        "line_boxes": line_boxes,
        "page_size": [1000, 1300],
        "source": f"{key}.pdf",
        "page": 0,
        "tokenizer": "test",
    }
    return {
        "__key__": key,
        IMAGE_FILE: png_bytes(image),
        TOKENIZER_IMAGE_FILE: png_bytes(image[::2, ::2]),
        TOKENS_FILE: tokens.getvalue(),
        META_FILE: json.dumps(meta).encode(),
    }


def write_dataset(root: Path, counts: tuple[int, ...], bad_key: str | None = None, source: str = "doc") -> list[str]:
    """Shards + manifest as data_prep writes them (each shard's samples, size and sha256); returns the keys of the
    decodable samples."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    entries, keys = [], []
    for index, count in enumerate(counts):
        name = SHARD_PATTERN.format(prefix="train", index=index)
        with wds.TarWriter(str(root / name)) as writer:
            for page in range(count):
                key = sample_key(f"{source}/{index}.pdf", page)
                sample = page_members(rng, key, int(rng.integers(1, 700)), mode="RGB" if page % 3 == 0 else "L")
                if key == bad_key:
                    sample[IMAGE_FILE] = b"\x89PNG not really"
                else:
                    keys.append(key)
                writer.write(sample)
        entries.append(
            {"name": name, "samples": count, "bytes": (root / name).stat().st_size, "sha256": file_digest(root / name)}
        )
    manifest = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "tokenizer": "test",
        "image_size": IMAGE_SIZE,
        "tokenizer_image_size": TOKENIZER_IMAGE_SIZE,
        "shards": entries,
        "total_samples": sum(counts),
        "rejects": {},
        "seed": 0,
    }
    (root / MANIFEST_FILE).write_text(json.dumps(manifest))
    return keys


def batch_keys(batches: list[dict]) -> list[str]:
    return [key for batch in batches for key in batch["keys"]]


def assert_same_batches(got: list[dict], expected: list[dict]) -> None:
    assert [batch["keys"] for batch in got] == [batch["keys"] for batch in expected]
    for a, b in zip(got, expected):
        assert a.keys() == b.keys()
        for name, value in a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[name]), name
