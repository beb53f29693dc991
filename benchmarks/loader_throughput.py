"""Loader throughput: decoded + collated + masked samples/s, per DataLoader worker, on synthetic document shards.

The shards imitate the real ones: pages of dark text-like strokes on white, squashed to 224 and 112 px, stored as
PNG at the writer's compression level, with 300..700 tokens a page in a deflated npz. The project's goal is
>= 300 samples/s per CPU core. By default the loader runs the pretraining collator (span masking, blockwise
patch masking, WPA labels), as pretraining does; --no-masking times shaping alone.

    python benchmarks/loader_throughput.py --workers 0 1 2
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image, ImageDraw

from layoutlmv3.data import Collator, build_train_loader, decode_sample
from layoutlmv3.data.decode import decode_png, decode_tokens
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
from layoutlmv3.pretraining.collator import PretrainingCollator

PNG_COMPRESS_LEVEL = 6  # what data_prep writes
DISTINCT_PAGES = 32  # rendered once, reused with fresh tokens: decode cost does not depend on repetition


def render_page(rng: np.random.Generator, width: int = 1000, height: int = 1300) -> Image.Image:
    """A grayscale page of text lines: random glyphs in words, a few ruled boxes, light scanner noise."""
    page = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(page)
    y = int(rng.integers(40, 90))
    while y < height - 60:
        x = int(rng.integers(40, 120))
        while x < width - 80:
            word = "".join(chr(c) for c in rng.integers(33, 127, int(rng.integers(2, 10))))
            draw.text((x, y), word, fill=int(rng.integers(0, 80)), font_size=int(rng.integers(14, 22)))
            x += 12 * len(word) + int(rng.integers(8, 20))
        y += int(rng.integers(22, 40))
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        draw.rectangle((x0, y0, x0 + int(rng.integers(100, 400)), y0 + int(rng.integers(40, 300))), outline=0)
    noise = rng.normal(0, 6, (height, width))
    return Image.fromarray(np.clip(np.asarray(page, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def encode_png(page: Image.Image, size: int) -> bytes:
    buffer = io.BytesIO()
    page.resize((size, size), Image.Resampling.BILINEAR).save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def make_sample(rng: np.random.Generator, key: str, images: tuple[bytes, bytes]) -> dict[str, bytes | str]:
    length = int(rng.integers(300, 701))
    words = length // 2
    word_ids = np.sort(rng.integers(0, words, length)).astype(np.int32)
    word_boxes = np.sort(rng.integers(0, 1001, (words, 4)).reshape(words, 2, 2), axis=1).reshape(words, 4)
    tokens = io.BytesIO()
    np.savez_compressed(
        tokens,
        input_ids=rng.integers(5, 50_000, length).astype(np.int32),
        bbox=word_boxes[word_ids].astype(np.int16),
        word_ids=word_ids,
    )
    meta = {
        "words": [f"word{i}" for i in range(words)],
        "word_boxes": word_boxes.tolist(),
        "line_ids": [i // 8 for i in range(words)],
        "line_boxes": word_boxes[::8].tolist(),
        "page_size": [1000, 1300],
        "source": f"{key}.png",
        "page": 0,
        "tokenizer": "benchmark",
    }
    return {
        "__key__": key,
        IMAGE_FILE: images[0],
        TOKENIZER_IMAGE_FILE: images[1],
        TOKENS_FILE: tokens.getvalue(),
        META_FILE: json.dumps(meta).encode(),
    }


def write_shards(root: Path, shards: int, per_shard: int, seed: int = 0) -> list[dict]:
    """Shards + manifest; returns the raw samples of the first shard (for the in-process breakdown)."""
    rng = np.random.default_rng(seed)
    pages = [render_page(rng) for _ in range(DISTINCT_PAGES)]
    images = [(encode_png(page, IMAGE_SIZE), encode_png(page, TOKENIZER_IMAGE_SIZE)) for page in pages]
    entries, first = [], []
    for index in range(shards):
        name = SHARD_PATTERN.format(prefix="bench", index=index)
        with wds.TarWriter(str(root / name)) as writer:
            for page in range(per_shard):
                sample = make_sample(rng, sample_key(f"doc{index}", page), images[(index + page) % DISTINCT_PAGES])
                writer.write(sample)
                if index == 0:
                    first.append(sample)
        entries.append({"name": name, "samples": per_shard, "bytes": (root / name).stat().st_size})
    manifest = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "tokenizer": "benchmark",
        "image_size": IMAGE_SIZE,
        "tokenizer_image_size": TOKENIZER_IMAGE_SIZE,
        "shards": entries,
        "total_samples": shards * per_shard,
        "rejects": {},
        "seed": seed,
    }
    (root / MANIFEST_FILE).write_text(json.dumps(manifest))
    return first


def stage_breakdown(raw: list[dict], batch_size: int) -> dict[str, float]:
    """CPU microseconds per sample of each decoding step and of collation, in this process, from memory."""
    steps = {
        "png224_us": lambda sample: decode_png(sample[IMAGE_FILE], IMAGE_SIZE),
        "png112_us": lambda sample: decode_png(sample[TOKENIZER_IMAGE_FILE], TOKENIZER_IMAGE_SIZE),
        "npz_us": lambda sample: decode_tokens(sample[TOKENS_FILE]),
        "json_us": lambda sample: json.loads(sample[META_FILE]),
        "decode_us": decode_sample,
    }
    result = {}
    for name, step in steps.items():
        start = time.process_time()
        for sample in raw:
            step(sample)
        result[name] = 1e6 * (time.process_time() - start) / len(raw)
    pages = [decode_sample(sample) for sample in raw]
    batches = len(pages) // batch_size
    for name, collator in (("collate_us", Collator()), ("collate_and_mask_us", pretraining_collator())):
        start = time.process_time()
        for offset in range(0, batches * batch_size, batch_size):
            collator(pages[offset : offset + batch_size])
        result[name] = 1e6 * (time.process_time() - start) / (batches * batch_size)
    return result


def pretraining_collator() -> PretrainingCollator:
    """What pretraining runs in the loader workers: shaping + span masking, blockwise patch masking, WPA labels."""
    return PretrainingCollator(Collator(), mask_token_id=50264, vocab_size=50265, special_token_ids=[0, 1, 2, 3, 50264])


def loader_rate(
    root: Path, workers: int, batch_size: int, batches: int, warmup: int, masking: bool
) -> dict[str, float]:
    """Whole loader (tar read, shuffle, decode, collate, hand-over to the main process) over one epoch.

    Wall rate after a warm-up, and CPU time per sample of the workers and of the main process over the whole epoch
    (getrusage, the workers counted once they have exited): the per-core figure that other load on the machine
    does not distort.
    """
    loader = build_train_loader(
        root, batch_size, num_workers=workers, epoch_length=warmup + batches, shuffle_buffer=256, resampled=True,
        collate_fn=pretraining_collator() if masking else None,
    )  # fmt: skip
    self_start, children_start = _cpu_seconds(resource.RUSAGE_SELF), _cpu_seconds(resource.RUSAGE_CHILDREN)
    iterator = iter(loader)
    total = sum(len(next(iterator)["keys"]) for _ in range(warmup))
    start = time.perf_counter()
    timed = sum(len(batch["keys"]) for batch in iterator)
    wall = time.perf_counter() - start
    del iterator, loader
    gc.collect()  # shuts the persistent workers down, so that RUSAGE_CHILDREN includes them
    main_cpu = _cpu_seconds(resource.RUSAGE_SELF) - self_start
    worker_cpu = _cpu_seconds(resource.RUSAGE_CHILDREN) - children_start
    total += timed
    return {
        "num_workers": workers,
        "samples_per_s": timed / wall,
        "worker_cpu_us": 1e6 * worker_cpu / total,
        "main_cpu_us": 1e6 * main_cpu / total,
        "samples_per_cpu_s": total / (worker_cpu + main_cpu),
    }


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--samples-per-shard", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per setting")
    parser.add_argument("--warmup", type=int, default=4, help="untimed batches first (worker start, buffer fill)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; the least CPU per sample is kept")
    parser.add_argument("--no-masking", action="store_true",
                        help="collate only (default: the pretraining collator, masks and WPA labels included)")  # fmt: skip
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        raw = write_shards(root, args.shards, args.samples_per_shard)
        shard_mb = sum(path.stat().st_size for path in root.glob("*.tar")) / args.shards / 2**20
        breakdown = stage_breakdown(raw, args.batch_size)
        rows = [
            max(
                (
                    loader_rate(root, workers, args.batch_size, args.batches, args.warmup, not args.no_masking)
                    for _ in range(args.repeats)
                ),
                key=lambda row: row["samples_per_cpu_s"],
            )
            for workers in args.workers
        ]

    image_kb = np.mean([len(sample[IMAGE_FILE]) + len(sample[TOKENIZER_IMAGE_FILE]) for sample in raw]) / 1024
    print(
        f"{args.shards} shards x {args.samples_per_shard} samples ({shard_mb:.1f} MiB/shard, {image_kb:.1f} KiB "
        f"of PNG/sample), batch {args.batch_size}, {os.cpu_count()} CPUs"
    )
    print("in-process CPU us/sample: " + ", ".join(f"{name[:-3]} {value:.0f}" for name, value in breakdown.items()))
    header = ("num_workers", "samples/s", "worker CPU us/sample", "main CPU us/sample", "samples per CPU-s")
    print(" | ".join(header))
    for row in rows:
        values = (row["num_workers"], row["samples_per_s"], row["worker_cpu_us"], row["main_cpu_us"])
        print(
            " | ".join(f"{value:>{len(name)}.0f}" for value, name in zip((*values, row["samples_per_cpu_s"]), header))
        )
    result = {"config": vars(args), "cpus": os.cpu_count(), "shard_mib": shard_mb, "png_kib_per_sample": image_kb}
    print(json.dumps(result | breakdown | {"loader": rows}))


if __name__ == "__main__":
    main()
