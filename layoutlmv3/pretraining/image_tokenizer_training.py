"""Training the VQ-VAE image tokenizer (`image_tokenizer.ImageTokenizer`) on document page images.

Data: an endless stream of 112x112 RGB pages from one of
  (a) a folder of page images (PNG/JPEG/TIFF, searched recursively; the first frame of a multi-page TIFF),
  (b) webdataset shards (the `tok.png` member of each sample, see `layoutlmv3.data.sample_format`), or
  (c) data_prep.synth pages, written to a folder by launch/train_image_tokenizer.py (self-contained smoke runs).
Pages are converted to RGB and resized to 112x112 (bilinear and without keeping the aspect ratio, as the shard
writer makes `tok.png`) and reach the model as float tensors [B, 3, 112, 112] with values in 0..1 (pixels / 255). Unreadable files and
samples are skipped with a logged warning.

Held-out pages are chosen by a hash of each page's key (relative path, shard sample key or synthetic page id), so
the split is the same on every run and needs no index of the data; training never sees them. Evaluation reports
reconstruction MSE and PSNR (10 log10(1 / MSE) over all held-out pixels, on 0..1 images), the fraction of the
codebook used on the held-out pages, and the perplexity of their code histogram.

A run directory holds the final tokenizer (config.json + model.safetensors: `ImageTokenizer.from_pretrained(dir)`),
`checkpoints/step-NNNNNN/` every `checkpoint_every` steps, `tensorboard/`, `eval_metrics.json`, `run_config.yaml`
and `reconstructions.png` (held-out originals above their reconstructions).
"""

from __future__ import annotations

import dataclasses
import glob
import io
import itertools
import json
import logging
import math
import random
import typing
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import braceexpand
import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from layoutlmv3.config_loading import build, coerce
from layoutlmv3.data.sample_format import TOKENIZER_IMAGE_FILE
from layoutlmv3.pretraining.image_tokenizer import ImageTokenizer, ImageTokenizerConfig, ImageTokenizerOutput
from layoutlmv3.processing import resize_page
from layoutlmv3.yaml_files import read_yaml

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
LR_SCHEDULES = ("cosine", "constant")
PRECISIONS = ("fp32", "bf16")


@dataclass
class DataConfig:
    """Where pages come from (exactly one of `images`, `shards`, `synthetic_pages`) and the held-out split."""

    images: str | None = None  # folder of page images
    shards: str | None = None  # directory of *.tar shards, a brace pattern (data-{000000..000009}.tar) or a glob
    synthetic_pages: int = 0  # this many data_prep.synth pages, written to a folder by launch/train_image_tokenizer.py
    synthetic_seed: int = 0
    eval_fraction: float = 0.1  # share of pages held out for evaluation (by a hash of the page key)
    eval_images: int = 64  # evaluate on at most this many held-out pages
    shuffle_buffer: int = 512  # pages mixed in a buffer (shards hold consecutive pages of one document)
    num_workers: int = 0  # DataLoader worker processes decoding pages
    # Keep decoded training pages in memory after the first epoch (37 KB each at 112 px): small datasets only.
    cache_in_memory: bool = False

    def validate(self) -> None:
        sources = [self.images is not None, self.shards is not None, self.synthetic_pages > 0]
        if sum(sources) != 1:
            raise ValueError("data: set exactly one of images, shards and synthetic_pages (> 0)")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"data.eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if self.eval_images < 1 or self.shuffle_buffer < 1 or self.num_workers < 0:
            raise ValueError("data: eval_images and shuffle_buffer must be >= 1, num_workers >= 0")


@dataclass
class TrainingConfig:
    """Optimisation, logging and output of one run."""

    out_dir: str = "outputs/image_tokenizer"
    steps: int = 1000
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"  # cosine decay to 0 after warmup, or constant after warmup
    warmup_steps: int = 0
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    log_every: int = 10  # TensorBoard scalars every this many steps
    eval_every: int = 500  # held-out evaluation every this many steps (and always at the end)
    checkpoint_every: int = 0  # intermediate checkpoints every this many steps; 0: only the final one
    grid_images: int = 8  # held-out pages in reconstructions.png
    seed: int = 0
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:N
    precision: str = "fp32"  # fp32 or bf16 autocast (the quantiser always runs in fp32)

    def validate(self) -> None:
        positive = ("steps", "batch_size", "log_every", "eval_every", "grid_images")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"training.{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("training: learning_rate must be > 0, weight_decay and grad_clip >= 0")
        if self.warmup_steps < 0 or self.checkpoint_every < 0:
            raise ValueError("training: warmup_steps and checkpoint_every must be >= 0")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"training.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"training.precision must be one of {PRECISIONS}, got {self.precision!r}")


@dataclass
class RunConfig:
    """A whole YAML file: `model` (a `flavor` plus ImageTokenizerConfig overrides), `data` and `training`."""

    model: ImageTokenizerConfig = field(default_factory=ImageTokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML run config; unknown or mistyped keys raise ValueError naming the key."""
    values = read_yaml(path) or {}
    try:
        return run_config_from_dict(values)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def run_config_from_dict(values: dict[str, Any]) -> RunConfig:
    """The run config from a mapping, by the shared config system (layoutlmv3.config_loading); `model` is a
    flavor plus ImageTokenizerConfig overrides, each checked against the field's type."""
    if not isinstance(values, dict):
        raise ValueError("a run config must be a mapping with sections model, data, training")
    unknown = sorted(set(values) - {"model", "data", "training"})
    if unknown:
        raise ValueError(f"unknown top-level keys {unknown}; the sections are model, data, training")
    model = dict(values.get("model") or {})
    flavor = model.pop("flavor", "base")
    hints = typing.get_type_hints(ImageTokenizerConfig)
    unknown = sorted(set(model) - set(hints))
    if unknown:
        raise ValueError(f"unknown model keys {unknown}; known: {sorted(hints)}")
    model = {key: coerce(hints[key], value, f"model.{key}") for key, value in model.items()}
    data = build(DataConfig, values.get("data") or {}, "data")
    training = build(TrainingConfig, values.get("training") or {}, "training")
    return RunConfig(ImageTokenizerConfig.from_flavor(flavor, **model), data, training)


# ---- data ---------------------------------------------------------------------------------------------------
PageImage = tuple[str, np.ndarray]  # (page key, uint8 [S, S, 3])


@dataclass(frozen=True)
class ImageSource:
    """A list of items (image files or shard URLs) and how to read pages from them."""

    kind: str  # "folder" or "shards"
    items: tuple[str, ...]
    root: str = ""  # folder: keys are paths relative to it

    def read(self, items: Iterable[str], size: int, keep: Callable[[str], bool]) -> Iterator[PageImage]:
        """Pages of `items` whose key passes `keep`, resized to `size`; the key is tested before decoding."""
        readers = {"folder": self._read_folder, "shards": _read_shards}
        return readers[self.kind](items, size, keep)

    def _read_folder(self, paths: Iterable[str], size: int, keep: Callable[[str], bool]) -> Iterator[PageImage]:
        for path in paths:
            key = Path(path).relative_to(self.root).with_suffix("").as_posix()
            if keep(key):
                try:
                    with Image.open(path) as image:
                        yield key, _to_array(image, size)
                except Exception as error:  # Pillow's many error types; a decompression bomb among them
                    _skipped(f"image {path}", error)


def _read_shards(urls: Iterable[str], size: int, keep: Callable[[str], bool]) -> Iterator[PageImage]:
    import webdataset as wds

    samples = wds.WebDataset(
        list(urls), shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False,
        handler=wds.warn_and_continue,
    )  # fmt: skip
    for sample in samples:
        key = sample["__key__"]
        if not keep(key):
            continue
        if TOKENIZER_IMAGE_FILE not in sample:
            logger.warning("skipping sample %s of %s: no %s", key, sample.get("__url__"), TOKENIZER_IMAGE_FILE)
            continue
        try:
            with Image.open(io.BytesIO(sample[TOKENIZER_IMAGE_FILE])) as image:
                yield key, _to_array(image, size)
        except Exception as error:
            _skipped(f"sample {key} of {sample.get('__url__')} ({TOKENIZER_IMAGE_FILE})", error)


_skip_count = itertools.count(1)  # per process (each DataLoader worker counts its own)


def _skipped(what: str, error: Exception) -> None:
    """A page that cannot be decoded (corrupt, or a decompression bomb: more pixels than Pillow's safety limit)
    costs one page, never the run; each is logged with a running count."""
    kind = "too large to decode safely" if isinstance(error, Image.DecompressionBombError) else "unreadable"
    logger.warning(
        "skipping %s: %s (%s: %s); %d skipped so far", what, kind, type(error).__name__, error, next(_skip_count)
    )


def _to_array(image: Image.Image, size: int) -> np.ndarray:
    """Any PIL page -> uint8 RGB [size, size, 3], resized like data_prep's tok.png."""
    return np.array(resize_page(image.convert("RGB"), size), dtype=np.uint8)


def image_source(data: DataConfig) -> ImageSource:
    """Resolve the configured source into its items; raises FileNotFoundError when it holds nothing."""
    if data.images is not None:
        root = Path(data.images)
        files = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images under {root}")
        return ImageSource("folder", tuple(files), root=str(root))
    if data.shards is not None:
        urls = shard_urls(data.shards)
        if not urls:
            raise FileNotFoundError(f"no shards match {data.shards}")
        return ImageSource("shards", tuple(urls))
    raise ValueError(
        "data.synthetic_pages: synthetic pages are made by data_prep, not the library; launch/train_image_tokenizer.py "
        "writes them to a folder and trains on it (data.images)"
    )


def shard_urls(spec: str) -> list[str]:
    """A directory (its *.tar), a brace pattern, a glob, or one path -> sorted shard paths."""
    if Path(spec).is_dir():
        return sorted(str(p) for p in Path(spec).glob("*.tar"))
    expanded = list(braceexpand.braceexpand(spec))
    return sorted({match for pattern in expanded for match in glob.glob(pattern)})


def is_held_out(key: str, fraction: float) -> bool:
    """Stable train/eval split by page key: the same pages are held out on every run and machine."""
    return zlib.crc32(key.encode()) / 2**32 < fraction


class TrainingImages(IterableDataset):
    """Endless stream of training pages (uint8 [3, S, S]): reshuffled every epoch, split across loader workers."""

    def __init__(self, source: ImageSource, data: DataConfig, size: int, seed: int) -> None:
        self.source, self.data, self.size, self.seed = source, data, size, seed

    def __iter__(self) -> Iterator[torch.Tensor]:
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        rng = random.Random(f"{self.seed}-{worker_id}")
        cache: list[PageImage] = []
        for epoch in itertools.count():
            if cache:
                pages: Iterable[PageImage] = cache
            else:
                items = list(self.source.items)
                random.Random(f"{self.seed}-epoch-{epoch}").shuffle(items)
                pages = self._read(items[worker_id::workers])
                if self.data.cache_in_memory:
                    pages = _remembered(pages, cache)
            produced = False
            for _, page in _shuffled(pages, self.data.shuffle_buffer, rng):
                produced = True
                yield torch.from_numpy(page).permute(2, 0, 1)
            if not produced:  # this worker's share is empty, held out or unreadable: leave it to the others
                return

    def _read(self, items: list[str]) -> Iterator[PageImage]:
        fraction = self.data.eval_fraction
        return self.source.read(items, self.size, lambda key: not is_held_out(key, fraction))


def _remembered(stream: Iterable[PageImage], memory: list[PageImage]) -> Iterator[PageImage]:
    for item in stream:
        memory.append(item)
        yield item


def _shuffled(stream: Iterable[PageImage], buffer_size: int, rng: random.Random) -> Iterator[PageImage]:
    """Approximate shuffle of a stream through a buffer of `buffer_size` items."""
    buffer: list[PageImage] = []
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
        raise ValueError(f"no held-out pages among {len(source.items)} {source.kind} items: raise data.eval_fraction")
    return torch.stack(pages)


# ---- evaluation ---------------------------------------------------------------------------------------------
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
        with _autocast(device, precision):
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
    Image.fromarray(pixels).save(path, optimize=True)


# ---- training -----------------------------------------------------------------------------------------------
def _autocast(device: torch.device, precision: str) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _lr_factor(training: TrainingConfig) -> Callable[[int], float]:
    """Linear warmup, then constant or cosine decay to zero at the last step."""

    def factor(step: int) -> float:
        if step < training.warmup_steps:
            return (step + 1) / training.warmup_steps
        if training.lr_schedule == "constant":
            return 1.0
        progress = (step - training.warmup_steps) / max(1, training.steps - training.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(config: RunConfig, progress: bool = True) -> dict[str, float]:
    """Train a tokenizer as `config` says, write the run directory (see module doc), return the final eval metrics."""
    training, size = config.training, config.model.image_size
    out = Path(training.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    torch.manual_seed(training.seed)
    device = _device(training.device)

    source = image_source(config.data)
    eval_images = held_out_images(source, config.data, size)
    logger.info("%d %s items; %d held-out pages for evaluation", len(source.items), source.kind, len(eval_images))
    loader = DataLoader(
        TrainingImages(source, config.data, size, training.seed),
        batch_size=training.batch_size,
        num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda",
    )

    model = ImageTokenizer(config.model).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(training))
    writer = SummaryWriter(str(out / "tensorboard"))
    used = torch.zeros(config.model.codebook_size, dtype=torch.bool, device=device)
    metrics: dict[str, float] = {}
    bar = tqdm(zip(range(1, training.steps + 1), loader), total=training.steps, disable=not progress, unit="step")
    step = 0
    for step, batch in bar:
        output = _optimise(model, optimizer, scheduler, batch.to(device, non_blocking=True).float() / 255, training)
        used[output.codes.flatten()] = True
        if step % training.log_every == 0:
            _log_training(writer, step, output, used, scheduler.get_last_lr()[0])
            bar.set_postfix(loss=f"{output.loss.item():.4f}", psnr=f"{psnr(output.recon_loss.item()):.1f}")
            used.zero_()
        if step % training.eval_every == 0 or step == training.steps:
            metrics = evaluate(model, eval_images, training.batch_size, training.precision)
            for name, value in metrics.items():
                writer.add_scalar(f"eval/{name}", value, step)
            logger.info("step %d eval: %s", step, _format(metrics))
        if training.checkpoint_every and step % training.checkpoint_every == 0 and step < training.steps:
            model.save_pretrained(out / "checkpoints" / f"step-{step:06d}")
    writer.close()
    if step < training.steps:
        raise RuntimeError(f"the data ran out after {step} steps: no readable training pages outside the held-out set")

    model.save_pretrained(out)
    (out / "eval_metrics.json").write_text(json.dumps({"step": training.steps, **metrics}, indent=2) + "\n")
    save_reconstruction_grid(model, eval_images[: training.grid_images], out / "reconstructions.png")
    logger.info("saved the tokenizer and reconstructions.png to %s", out)
    return metrics


def _optimise(
    model: ImageTokenizer,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    images: torch.Tensor,
    training: TrainingConfig,
) -> ImageTokenizerOutput:
    """One optimisation step on a batch of 0..1 images (the forward pass also moves the codebook)."""
    with _autocast(images.device, training.precision):
        output = model(images)
    optimizer.zero_grad(set_to_none=True)
    output.loss.backward()
    if training.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip)
    optimizer.step()
    scheduler.step()
    return output


def _log_training(
    writer: SummaryWriter, step: int, output: ImageTokenizerOutput, used: torch.Tensor, lr: float
) -> None:
    """Scalars of the last batch; `codebook_usage` is the fraction of codes used since the previous log."""
    scalars = {
        "loss": output.loss.item(),
        "recon_loss": output.recon_loss.item(),
        "commit_loss": output.commit_loss.item(),
        "psnr": psnr(output.recon_loss.item()),
        "perplexity": output.perplexity.item(),
        "codebook_usage": used.float().mean().item(),
        "learning_rate": lr,
    }
    for name, value in scalars.items():
        writer.add_scalar(f"train/{name}", value, step)


def _format(metrics: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4g}" for name, value in metrics.items())
