"""Pages for the VQ-VAE image tokenizer: where they come from, which are held out, a rank's resumable stream of
training batches, and the held-out evaluation (reconstruction MSE/PSNR, codebook use).

Sources: a folder of page images (PNG/JPEG/TIFF, searched recursively; the first frame of a multi-page TIFF) or
webdataset shards (the `tok.png` member of each sample, see `layoutlmv3.data.sample_format`); synthetic pages are
written to a folder by launch/train_image_tokenizer.py. Pages are converted to RGB and resized to 112x112 like the
shard writer's `tok.png` (`page_sources.resize_page`) and reach the model as float tensors [B, 3, 112, 112] in 0..1
(pixels / 255). Unreadable files and samples are skipped with a logged warning and a running count.

Held-out pages are chosen by a hash of each page's key (relative path or shard sample key), so the split is the
same on every run and needs no index of the data; training never sees them.

A rank's training stream (`PageBatches`): each epoch the items (files or shards) are shuffled by (seed, epoch),
rank r takes every world-size-th, their pages pass a seeded shuffle buffer as undecoded entries (paths or bytes),
and only then are decoded, in a few threads. The position is (epoch, entries consumed), so a resumed stream
skips what it had consumed without decoding it and continues with exactly the batches an uninterrupted run gets.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import random
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from layoutlmv3.atomic_files import file_in_place
from layoutlmv3.config_loading import require
from layoutlmv3.data.loader import read_shards
from layoutlmv3.data.remote import DEFAULT_RETRY, RetryPolicy
from layoutlmv3.data.sample_format import TOKENIZER_IMAGE_FILE
from layoutlmv3.data.shards import Shard, list_shards
from layoutlmv3.page_sources import IMAGE_SUFFIXES, PageTooLarge, open_image, resize_page

from .image_tokenizer import ImageTokenizer

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Where pages come from (exactly one of `images`, `shards`, `synthetic_pages`) and the held-out split."""

    images: str | None = None  # folder of page images
    shards: str | None = None  # as pretraining's data.train_shards: a dataset directory, its manifest, a brace pattern
    synthetic_pages: int = 0  # this many data_prep.synth pages, written to a folder by launch/train_image_tokenizer.py
    synthetic_seed: int = 0  # seed of the synthetic pages
    eval_fraction: float = 0.1  # share of pages held out for evaluation (by a hash of the page key)
    eval_images: int = 64  # evaluate on at most this many held-out pages
    shuffle_buffer: int = 512  # pages mixed in a buffer (shards hold consecutive pages of one document)
    num_workers: int = 2  # threads decoding pages
    # Keep decoded training pages in memory after the first epoch (37 KB each at 112 px): small datasets only.
    cache_in_memory: bool = False
    # Shards at http(s):// URLs or `pipe:` commands, as pretraining's data.remote_*: attempts per shard or manifest,
    # the first back-off (doubled each time), and the deadline of one attempt (seconds of waiting on the server or
    # command in all) after which it is cut off (layoutlmv3/data/remote.py).
    remote_attempts: int = 5
    remote_retry_s: float = 2.0  # the first back-off between attempts, doubled after each failure
    remote_deadline_s: float = 600.0  # seconds of waiting in all before one attempt is cut off

    def __post_init__(self) -> None:
        sources = [self.images is not None, self.shards is not None, self.synthetic_pages > 0]
        require(sum(sources) == 1, "data: set exactly one of images, shards and synthetic_pages (> 0)")
        require(0 < self.eval_fraction < 1, f"data.eval_fraction must be in (0, 1), got {self.eval_fraction}")
        require(self.eval_images >= 1, f"data.eval_images must be >= 1, got {self.eval_images}")
        require(self.shuffle_buffer >= 1, f"data.shuffle_buffer must be >= 1, got {self.shuffle_buffer}")
        require(self.num_workers >= 1, f"data.num_workers (decoding threads) must be >= 1, got {self.num_workers}")
        require(self.remote_attempts >= 1, f"data.remote_attempts must be >= 1, got {self.remote_attempts}")
        require(self.remote_retry_s >= 0, f"data.remote_retry_s must be >= 0, got {self.remote_retry_s}")
        require(
            math.isfinite(self.remote_deadline_s) and self.remote_deadline_s > 0,
            f"data.remote_deadline_s must be a positive number of seconds, got {self.remote_deadline_s}",
        )

    @property
    def retry(self) -> RetryPolicy:
        """The policy every remote read of this source uses (its manifest and its shards)."""
        return RetryPolicy(self.remote_attempts, self.remote_retry_s, self.remote_deadline_s)


PageImage = tuple[str, np.ndarray]  # (page key, uint8 [S, S, 3])
RawPage = tuple[str, str | bytes | None, str]  # (page key, file path or tok.png bytes (None: absent), where from)


@dataclass(frozen=True)
class ImageSource:
    """A list of items (image files or shard URLs) and how to read pages from them: shards as the pretraining
    loader reads them, each checked against what its manifest records (`records`: samples, size, sha256) and
    remote ones with the config's `retry` (attempts, deadline)."""

    kind: str  # "folder" or "shards"
    items: tuple[str, ...]
    root: str = ""  # folder: keys are paths relative to it
    records: dict[str, Shard] = field(default_factory=dict, compare=False)  # shards: url -> its manifest entry
    retry: RetryPolicy = DEFAULT_RETRY

    def raw(self, items: Iterable[str], keep: Callable[[str], bool]) -> Iterator[RawPage]:
        """Undecoded pages of `items` whose key passes `keep`."""
        if self.kind == "folder":
            return self._raw_folder(items, keep)
        return _raw_shards(items, keep, self.records, self.retry)

    def read(self, items: Iterable[str], size: int, keep: Callable[[str], bool]) -> Iterator[PageImage]:
        """Decoded pages of `items` whose key passes `keep`, resized to `size` (unreadable ones skipped)."""
        for raw in self.raw(items, keep):
            page = decode_page(raw, size)
            if page is not None:
                yield raw[0], page

    def _raw_folder(self, paths: Iterable[str], keep: Callable[[str], bool]) -> Iterator[RawPage]:
        for path in paths:
            key = Path(path).relative_to(self.root).with_suffix("").as_posix()
            if keep(key):
                yield key, path, f"image {path}"


def _raw_shards(
    urls: Iterable[str], keep: Callable[[str], bool], records: dict[str, Shard], retry: RetryPolicy
) -> Iterator[RawPage]:
    """Shards read through pretraining's one checked path (`loader.read_shards`: local, http(s)://, pipe:, under
    the deadline and retried; a shard other than its manifest entry, or unreadable, logged and skipped)."""
    for sample in read_shards(urls, retry, records):
        key = sample["__key__"]
        if keep(key):
            yield key, sample.get(TOKENIZER_IMAGE_FILE), f"sample {key} of {sample['__url__']}"


def decode_page(raw: RawPage, size: int) -> np.ndarray | None:
    """uint8 RGB [size, size, 3], or None (logged) for a sample without tok.png or an unreadable image."""
    key, payload, where = raw
    if payload is None:
        logger.warning("skipping %s: no %s", where, TOKENIZER_IMAGE_FILE)
        return None
    try:
        with open_image(payload if isinstance(payload, str) else io.BytesIO(payload)) as image:  # the pixel cap
            return np.array(resize_page(image.convert("RGB"), size), dtype=np.uint8)
    except Exception as error:  # Pillow's many error types; a decompression bomb among them
        _skipped(where if isinstance(payload, str) else f"{where} ({TOKENIZER_IMAGE_FILE})", error)
        return None


_skip_count = itertools.count(1)  # per process (each DataLoader worker counts its own)


def _skipped(what: str, error: Exception) -> None:
    """A page that cannot be decoded (corrupt, or a decompression bomb: more pixels than page_sources.MAX_PAGE_PIXELS)
    costs one page, never the run; each is logged with a running count."""
    kind = "too large to decode safely" if isinstance(error, PageTooLarge) else "unreadable"
    logger.warning(
        "skipping %s: %s (%s: %s); %d skipped so far", what, kind, type(error).__name__, error, next(_skip_count)
    )


def image_source(data: DataConfig) -> ImageSource:
    """Resolve the configured source into its items; raises FileNotFoundError when it holds nothing."""
    if data.images is not None:
        root = Path(data.images)
        files = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"no {'/'.join(sorted(IMAGE_SUFFIXES))} images under {root}")
        return ImageSource("folder", tuple(files), root=str(root))
    if data.shards is not None:
        shards = list_shards(data.shards, data.retry)  # pretraining's one reading of a shard source
        if not shards:
            raise FileNotFoundError(f"no shards match {data.shards}")
        records = {shard.url: shard for shard in shards}
        return ImageSource("shards", tuple(shard.url for shard in shards), records=records, retry=data.retry)
    raise ValueError(
        "data.synthetic_pages: synthetic pages are made by data_prep, not the library; launch/train_image_tokenizer.py "
        "writes them to a folder and trains on it (data.images)"
    )


def is_held_out(key: str, fraction: float) -> bool:
    """Stable train/eval split by page key: the same pages are held out on every run and machine."""
    return zlib.crc32(key.encode()) / 2**32 < fraction


class PageBatches:
    """A rank's endless training batches (uint8 [B, 3, S, S]) with a position a checkpoint holds (module doc)."""

    def __init__(
        self, source: ImageSource, data: DataConfig, size: int, batch_size: int, rank: int, world_size: int, seed: int
    ) -> None:
        if source.kind == "shards" and len(source.items) < world_size:
            raise ValueError(f"{len(source.items)} shard(s) for {world_size} ranks: every rank needs at least one")
        self.source, self.data, self.size, self.batch_size = source, data, size, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch, self.consumed = 0, 0
        self._cache: dict[str, np.ndarray] = {}

    def __iter__(self) -> Iterator[torch.Tensor]:
        """The rest of the current epoch's batches (an incomplete last batch is dropped), then the next epoch."""
        items = list(self.source.items)
        random.Random(f"{self.seed}-epoch-{self.epoch}").shuffle(items)
        raw = self.source.raw(items[self.rank :: self.world_size], self._keep)
        rng = random.Random(f"{self.seed}-{self.rank}-{self.epoch}")
        entries = itertools.islice(_shuffled(raw, self.data.shuffle_buffer, rng), self.consumed, None)
        consumed, pages, produced = self.consumed, [], False
        with ThreadPoolExecutor(self.data.num_workers) as pool:
            for page in _decoded_in_order(pool, entries, self._decode, 4 * self.batch_size):
                consumed += 1
                if page is None:
                    continue
                pages.append(torch.from_numpy(page).permute(2, 0, 1))
                if len(pages) == self.batch_size:
                    self.consumed, produced = consumed, True
                    yield torch.stack(pages)
                    pages = []
        if not produced and self.consumed == 0:
            raise ValueError(
                f"rank {self.rank} found no readable training pages outside the held-out set in epoch {self.epoch}"
                f" (its share: {len(items[self.rank :: self.world_size])} of {len(items)} {self.source.kind} items)"
            )
        self.epoch, self.consumed = self.epoch + 1, 0

    def _keep(self, key: str) -> bool:
        return not is_held_out(key, self.data.eval_fraction)

    def _decode(self, raw: RawPage) -> np.ndarray | None:
        cached = self._cache.get(raw[0])
        if cached is not None:
            return cached
        page = decode_page(raw, self.size)
        if page is not None and self.data.cache_in_memory:
            self._cache[raw[0]] = page
        return page

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed, "world_size": self.world_size, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state.get("world_size"), state.get("seed")) != (self.world_size, self.seed):
            raise ValueError(
                f"the page position was saved on {state.get('world_size')} ranks with seed {state.get('seed')}, "
                f"this run has {self.world_size} ranks and seed {self.seed}"
            )
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])


def _decoded_in_order(
    pool: ThreadPoolExecutor, entries: Iterator[RawPage], decode: Callable[[RawPage], Any], ahead: int
) -> Iterator[Any]:
    """decode(entry) for each entry, in order, at most `ahead` decodes in flight (PIL releases the GIL)."""
    pending = [pool.submit(decode, entry) for entry in itertools.islice(entries, ahead)]
    while pending:
        result = pending.pop(0).result()
        pending += [pool.submit(decode, entry) for entry in itertools.islice(entries, 1)]
        yield result


def _shuffled(stream: Iterable[RawPage], buffer_size: int, rng: random.Random) -> Iterator[RawPage]:
    """Approximate shuffle of a stream through a buffer of `buffer_size` items."""
    buffer: list[RawPage] = []
    for item in stream:
        buffer.append(item)
        if len(buffer) >= buffer_size:
            index = rng.randrange(len(buffer))
            buffer[index], buffer[-1] = buffer[-1], buffer[index]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


def held_out_images(source: ImageSource, data: DataConfig, size: int) -> torch.Tensor:
    """The first `eval_images` held-out pages in source order, uint8 [N, 3, S, S]."""
    pages = []
    for _, page in source.read(source.items, size, lambda key: is_held_out(key, data.eval_fraction)):
        pages.append(torch.from_numpy(page).permute(2, 0, 1))
        if len(pages) == data.eval_images:
            break
    if not pages:
        raise ValueError(
            f"no readable held-out page among {len(source.items)} {source.kind} items: if pages were skipped as "
            "unreadable (logged above), check the inputs; else raise data.eval_fraction"
        )
    return torch.stack(pages)


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast of the encoder and decoder ("bf16") or none ("fp32"); the quantiser runs in fp32 anyway."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error on 0..1 images."""
    return 10 * math.log10(1 / max(mse, 1e-12))


@torch.no_grad()
def evaluate(model: ImageTokenizer, images: torch.Tensor, batch_size: int, precision: str) -> dict[str, float]:
    """Reconstruction MSE/PSNR (on 0..1 outputs, as `decode` gives them) and codebook use on uint8 `images`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    squared_error, pixels = 0.0, 0
    counts = torch.zeros(model.codebook_size, device=device)
    for batch in images.split(batch_size):
        batch = batch.to(device).float() / 255
        with autocast(device, precision):
            output = model(batch)
        squared_error += (output.reconstruction.float().clamp(0, 1) - batch).pow(2).sum().item()
        pixels += batch.numel()
        counts += torch.bincount(output.codes.flatten(), minlength=model.codebook_size)
    model.train(was_training)
    mse = squared_error / pixels
    probabilities = counts / counts.sum()
    entropy = -(probabilities[probabilities > 0] * probabilities[probabilities > 0].log()).sum().item()
    return {
        "mse": mse,
        "psnr": psnr(mse),
        "codebook_usage": (counts > 0).float().mean().item(),
        "perplexity": math.exp(entropy),
    }


@torch.no_grad()
def save_reconstruction_grid(model: ImageTokenizer, images: torch.Tensor, path: Path) -> None:
    """PNG with the uint8 `images` in the top row and their reconstructions (encode -> decode) below."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    originals = images.to(device).float() / 255
    reconstructions = model.decode(model.encode(originals))
    model.train(was_training)
    count, size, pad = len(images), images.shape[-1], 2
    grid = torch.ones(3, 2 * size + 3 * pad, count * (size + pad) + pad)
    for column, (original, reconstruction) in enumerate(zip(originals.cpu(), reconstructions.float().cpu())):
        left = pad + column * (size + pad)
        grid[:, pad : pad + size, left : left + size] = original
        grid[:, 2 * pad + size : 2 * pad + 2 * size, left : left + size] = reconstruction
    pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    with file_in_place(path) as temporary:
        Image.fromarray(pixels).save(temporary, format="PNG", optimize=True)
