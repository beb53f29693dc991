"""Training/evaluation loader over tokenized webdataset shards, with an exactly resumable position.

Order. Every DataLoader worker runs one *logical worker*: a stream of raw samples (tar members grouped by key,
webdataset's reader) that is a pure function of (seed, epoch, rank, logical worker), shuffled by a seeded buffer,
then decoded and collated into batches inside the worker. The DataLoader hands batches out round-robin over its
workers (skipping exhausted ones), so the batch order of an epoch is fixed too.

Splitting is explicit -- ranks take every world_size-th shard of the epoch's shard order, then workers every
num_workers-th of the rank's -- instead of webdataset's split_by_node/split_by_worker, which read the rank from
the environment or torch.distributed: passing rank/world_size lets one process build any rank's loader (tests,
tools) and keeps the split a visible function of the arguments.

Modes. resampled=True (training at scale): each logical worker draws shards with replacement from its own seeded
RNG, an endless stream, and stops after a fixed share of `epoch_length` batches -- every rank yields the same
number of batches whatever the shard count or sizes, so no rank waits on another in a collective.
resampled=False (evaluation, exact epochs): each shard goes to exactly one (rank, worker) and every sample is
seen once per epoch; ranks may then yield different numbers of batches (the last one of each worker partial).

Resume. The loader counts, per logical worker, the batches it received and the raw samples they consumed, and
which worker comes next. A resumed iteration maps DataLoader worker p to logical worker (p + next) % num_workers
(keeping the round-robin order) and each logical worker drops the raw samples it already consumed *before*
decoding them, so the next batches are exactly those an uninterrupted run would have produced.
"""

from __future__ import annotations

import logging
import random
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from layoutlmv3.data.collate import Collator
from layoutlmv3.data.decode import PageSample, decode_sample
from layoutlmv3.data.remote import DEFAULT_RETRY, RetryPolicy, shard_samples
from layoutlmv3.data.shards import Shard, ShardSource, WeightedShards, list_shards, total_samples

logger = logging.getLogger(__name__)

CollateFn = Callable[[Sequence[PageSample], int], dict]
POSITION_KEY = "__position__"  # (logical worker, its batches so far, its raw samples so far); the loader pops it
MAX_EMPTY_SHARDS = 100  # consecutive shards without a single sample: the data is unreadable, stop drawing
_LAYOUT_FIELDS = (
    "seed", "rank", "world_size", "num_workers", "batch_size", "resampled", "epoch_length", "length_bucket_batches",
    "weights",
)  # fmt: skip


def build_train_loader(
    shards: ShardSource | Sequence[WeightedShards],
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 2,
    seed: int = 0,
    epoch_length: int | None = None,
    shuffle_buffer: int = 1000,
    resampled: bool = True,
    collate_fn: CollateFn | None = None,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
    length_bucket_batches: int = 0,
    tokenizer: str | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> ShardLoader:
    """Loader for one rank; see the module docstring for the two modes and how resuming works.

    epoch_length: batches per rank per epoch (resampled mode only); None derives it from the manifest's sample
    counts as total_samples // (batch_size * world_size). shuffle_buffer: raw samples held per worker for
    shuffling (0 or 1: stream order). collate_fn(samples, epoch) defaults to `Collator(seed=seed)`.
    length_bucket_batches: 0 (off) or K >= 2: length bucketing -- each worker sorts K batches' worth of pages by
    token count, cuts them into K batches of similar lengths and hands those out in a seeded random order; with
    `pad_to` "longest" or a multiple, short pages then stop paying for long ones (benchmarks/padding_waste.py).
    tokenizer: the fingerprint every sample's meta must carry (None: unchecked); a sample tokenized with another
    vocabulary stops the run (ValueError) rather than train on token ids that mean other words.
    retry: attempts and back-off for shards at http(s):// URLs or `pipe:` commands (remote.py).
    shards as a list of WeightedShards: a mixture (resampled mode only). Each logical worker reads an endless
    resampled stream per corpus and draws the corpus of every sample by weight from its own seeded generator, so
    the samples follow the weights whatever the shard sizes, and a resumed loader repeats the mixture exactly.
    """
    sources, weights = _sources(shards, retry)
    if len(sources) > 1 and not resampled:
        raise ValueError("a weighted mixture of corpora is read in resampled mode (training), not as exact epochs")
    shard_list = [shard for source in sources for shard in source]
    if batch_size < 1 or num_workers < 0 or shuffle_buffer < 0 or seed < 0:
        raise ValueError("batch_size must be >= 1; num_workers, shuffle_buffer and seed >= 0")
    if length_bucket_batches < 0 or length_bucket_batches == 1:
        raise ValueError(f"length_bucket_batches must be 0 (off) or >= 2, got {length_bucket_batches}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    if resampled:
        epoch_length = _resampled_epoch_length(shard_list, batch_size, world_size, epoch_length)
    elif epoch_length is not None:
        raise ValueError("epoch_length applies to resampled=True; an exact epoch is one pass over the shards")
    dataset = ShardDataset(
        sources,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        seed=seed,
        epoch_length=epoch_length,
        shuffle_buffer=shuffle_buffer,
        collate_fn=collate_fn or Collator(seed=seed),
        length_bucket_batches=length_bucket_batches,
        tokenizer=tokenizer,
        weights=weights,
        retry=retry,
    )
    dataloader = DataLoader(
        dataset,
        batch_size=None,  # the dataset yields whole batches: they are formed where the samples are decoded
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        worker_init_fn=_ignore_ctrl_c,
    )
    return ShardLoader(dataset, dataloader)


class LoaderLayoutChanged(ValueError):
    """A saved position of a loader built otherwise: `name` (a constructor argument) was `saved`, is `current`."""

    def __init__(self, name: str, saved: Any, current: Any) -> None:
        super().__init__(f"cannot resume: state has {name}={saved!r}, loader {current!r}")
        self.name, self.saved, self.current = name, saved, current


def _ignore_ctrl_c(worker_id: int) -> None:
    """Ctrl-C reaches the whole foreground process group, workers included: the training process turns the first
    into a stop after the step under way (training/signals.py), whose batches the workers must go on making.
    Without this a worker would run the handler it was forked with, or die of a second Ctrl-C while the training
    process saves. The workers end with the loader, as always."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _sources(
    shards: ShardSource | Sequence[WeightedShards], retry: RetryPolicy
) -> tuple[list[list[Shard]], list[float]]:
    """The corpora (each a non-empty shard list) and their weights; a plain source is one corpus of weight 1.
    Remote manifests are read with `retry`, like the shards."""
    if isinstance(shards, list | tuple) and shards and all(isinstance(item, WeightedShards) for item in shards):
        sources = [list_shards(item.shards, retry) for item in shards]
        weights = [float(item.weight) for item in shards]
        empty = [str(item.shards) for item, source in zip(shards, sources, strict=True) if not source]
        if empty:
            raise ValueError(f"no shards in {empty}")
        if any(weight <= 0 for weight in weights):
            raise ValueError(f"mixture weights must be > 0, got {weights}")
        return sources, weights
    source = list_shards(shards, retry)
    if not source:
        raise ValueError("no shards")
    return [source], [1.0]


def _resampled_epoch_length(shards: list[Shard], batch_size: int, world_size: int, epoch_length: int | None) -> int:
    if epoch_length is None:
        total = total_samples(shards)
        if total is None:
            raise ValueError("resampled=True needs epoch_length when the shards come without a manifest")
        epoch_length = total // (batch_size * world_size)
    if epoch_length < 1:
        raise ValueError(f"epoch_length must be >= 1 batch, got {epoch_length}")
    return epoch_length


class ShardDataset(IterableDataset):
    """One rank's batches; each DataLoader worker produces the batches of one logical worker.

    The position to start from (epoch, next worker, per-worker batches and raw samples consumed) lives in a
    shared-memory tensor written by `ShardLoader`, so persistent workers see each new epoch and resume point.
    """

    def __init__(
        self,
        sources: list[list[Shard]],
        batch_size: int,
        rank: int,
        world_size: int,
        num_workers: int,
        seed: int,
        epoch_length: int | None,
        shuffle_buffer: int,
        collate_fn: CollateFn,
        length_bucket_batches: int = 0,
        tokenizer: str | None = None,
        weights: list[float] | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        super().__init__()
        self.sources, self.weights, self.retry = sources, weights or [1.0] * len(sources), retry
        self.shards = [shard for source in sources for shard in source]
        self.records = {shard.url: shard for shard in self.shards}  # what the manifest says of each shard
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.epoch_length, self.shuffle_buffer, self.collate_fn = epoch_length, shuffle_buffer, collate_fn
        self.logical_workers = max(num_workers, 1)
        self.length_bucket_batches = length_bucket_batches
        self.tokenizer = tokenizer
        # [epoch, next worker, batches of worker 0..W-1, raw samples of worker 0..W-1]
        self.position = torch.zeros(2 + 2 * self.logical_workers, dtype=torch.int64).share_memory_()

    @property
    def resampled(self) -> bool:
        return self.epoch_length is not None

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        position = self.position.tolist()
        epoch, next_worker, workers = position[0], position[1], self.logical_workers
        worker = ((info.id if info is not None else 0) + next_worker) % workers
        batches, samples = position[2 + worker], position[2 + workers + worker]
        return self._batches(epoch, worker, batches, samples)

    def _batches(self, epoch: int, worker: int, batches: int, samples: int) -> Iterator[dict]:
        """The logical worker's batches after its first `batches`.

        Pages are taken in groups of `group` batches (1 without length bucketing). `samples` is the number of raw
        samples consumed before the group holding the next batch, so a resumed worker re-reads that group and
        skips the batches of it already handed out.
        """
        quota = self.worker_quota(worker) if self.resampled else None
        if quota is not None and batches >= quota:
            return
        group = max(self.length_bucket_batches, 1)
        skip = batches % group  # batches of the current group already handed out
        batches -= skip
        group_start = samples
        raw = islice(self._raw_samples(epoch, worker), samples, None)  # skipped before any decoding
        for pages, consumed in _page_groups(raw, samples, self.batch_size * group):
            chunks = self._split_group(pages, epoch, worker, batches // group)
            for index, chunk in enumerate(chunks):
                batches += 1
                next_start = consumed if index == len(chunks) - 1 else group_start
                if index >= skip:
                    yield self._collate(chunk, epoch, (worker, batches, next_start))
                if batches == quota:
                    return
            skip, group_start = 0, consumed

    def _split_group(self, pages: list[PageSample], epoch: int, worker: int, index: int) -> list[list[PageSample]]:
        """Batches of a group: in stream order, or (length bucketing) by token count in a seeded random order."""
        if self.length_bucket_batches:
            pages = sorted(pages, key=lambda page: len(page.input_ids))
        chunks = [pages[start : start + self.batch_size] for start in range(0, len(pages), self.batch_size)]
        if self.length_bucket_batches:
            random.Random(_derive_seed(self.seed, epoch, self.rank, worker, 2, index)).shuffle(chunks)
        return chunks

    def _collate(self, pages: list[PageSample], epoch: int, position: tuple[int, int, int]) -> dict:
        for page in pages:
            if self.tokenizer is not None and page.meta.get("tokenizer") != self.tokenizer:
                raise ValueError(
                    f"sample {page.key} was tokenized with tokenizer {page.meta.get('tokenizer')}, data.tokenizer is "
                    f"{self.tokenizer}: its token ids mean other words; rebuild its shards or fix data.tokenizer"
                )
        batch = self.collate_fn(pages, epoch)
        batch[POSITION_KEY] = position
        return batch

    def worker_quota(self, worker: int) -> int:
        """Batches a logical worker yields per epoch in resampled mode: an even share of epoch_length."""
        assert self.epoch_length is not None
        share, extra = divmod(self.epoch_length, self.logical_workers)
        return share + (worker < extra)

    def _raw_samples(self, epoch: int, worker: int) -> Iterator[dict[str, Any]]:
        """The logical worker's undecoded samples, in their deterministic (shuffled) order."""
        if len(self.sources) > 1:
            samples = self._mixed_samples(epoch, worker)
        else:
            urls = self._resampled_urls(epoch, worker) if self.resampled else iter(self.worker_shards(epoch, worker))
            samples = read_shards(urls, self.retry, self.records)
        if self.shuffle_buffer > 1:
            seed = _derive_seed(self.seed, epoch, self.rank, worker, 1)
            samples = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, seed=seed)(samples)
        return samples

    def worker_shards(self, epoch: int, worker: int) -> list[str]:
        """Exact mode: the epoch's shard order (same on every rank), every world_size-th for this rank, then
        every num_workers-th of those for the worker -- each shard read by exactly one (rank, worker)."""
        order = list(range(len(self.shards)))
        random.Random(_derive_seed(self.seed, epoch)).shuffle(order)
        mine = order[self.rank :: self.world_size][worker :: self.logical_workers]
        return [self.shards[index].url for index in mine]

    def _resampled_urls(self, epoch: int, worker: int, source: int | None = None) -> Iterator[str]:
        """Shards drawn with replacement (of one corpus of a mixture, or of all shards) from a seeded generator."""
        shards = self.shards if source is None else self.sources[source]
        numbers = (self.seed, epoch, self.rank, worker, 0) + (() if source is None else (3, source))
        rng = random.Random(_derive_seed(*numbers))
        while True:
            yield shards[rng.randrange(len(shards))].url

    def _mixed_samples(self, epoch: int, worker: int) -> Iterator[dict[str, Any]]:
        """Samples of a mixture: each one's corpus drawn by weight, then the next sample of that corpus's stream."""
        streams = [
            read_shards(self._resampled_urls(epoch, worker, index), self.retry, self.records)
            for index in range(len(self.sources))
        ]
        rng = random.Random(_derive_seed(self.seed, epoch, self.rank, worker, 4))
        corpora = range(len(streams))
        while True:
            (index,) = rng.choices(corpora, weights=self.weights)
            yield next(streams[index])


def _page_groups(raw: Iterator[dict[str, Any]], samples: int, size: int) -> Iterator[tuple[list[PageSample], int]]:
    """Decoded pages in groups of `size` (the last one possibly smaller), each with the raw-sample count after it;
    undecodable samples are counted and skipped."""
    pages: list[PageSample] = []
    for sample in raw:
        samples += 1
        page = _decode_or_none(sample)
        if page is not None:
            pages.append(page)
        if len(pages) == size:
            yield pages, samples
            pages = []
    if pages:
        yield pages, samples


def read_shards(urls: Iterable[str], retry: RetryPolicy, records: dict[str, Shard]) -> Iterator[dict[str, Any]]:
    """The one checked path every shard reader takes (this loader, the image tokenizer's pages): raw samples of
    the shards in turn (remote ones retried, see remote.py; `records`: what the manifest says of each -- sample
    count, size, sha256 -- a shard that differs being damaged); an unreadable or damaged shard, or its unreadable
    rest, is logged and skipped."""
    empty_run = 0
    for url in urls:
        count = 0
        record = records.get(url) or Shard(url)
        for sample in shard_samples(url, retry, record.samples, record.bytes, record.sha256):
            count += 1
            yield sample
        empty_run = 0 if count else empty_run + 1
        if empty_run == MAX_EMPTY_SHARDS:
            raise RuntimeError(f"{MAX_EMPTY_SHARDS} shards in a row held no readable sample (last: {url})")


def _decode_or_none(sample: dict[str, Any]) -> PageSample | None:
    try:
        return decode_sample(sample)
    except Exception as exn:  # a bad sample must cost one sample, never the run
        logger.warning("skipping sample %s of shard %s: %s", sample.get("__key__"), sample.get("__url__"), exn)
        return None


def _derive_seed(*numbers: int) -> int:
    return int(np.random.SeedSequence(numbers).generate_state(1)[0])


class ShardLoader:
    """Iterable over one rank's batches, epoch after epoch, with a resumable position.

    Each `iter()` continues from the current position: the rest of the current epoch, and once an epoch is
    exhausted the next `iter()` starts the next one. `state_dict()` taken between batches and loaded into a loader
    built with the same arguments makes it yield exactly the batches the original would have yielded next.
    In exact mode the end of an epoch is only known once the workers run dry, so a state saved after an epoch's
    last batch (before the iterator ended) resumes with that epoch's empty remainder; resampled epochs have a
    known length and move on at once. Keep one live iterator at a time.
    """

    def __init__(self, dataset: ShardDataset, dataloader: DataLoader) -> None:
        self.dataset, self.dataloader = dataset, dataloader
        self.epoch = 0
        self._start_epoch(0)

    def _start_epoch(self, epoch: int) -> None:
        workers = self.dataset.logical_workers
        self.epoch, self.batches, self.next_worker = epoch, 0, 0
        self.worker_batches, self.worker_samples = [0] * workers, [0] * workers

    @property
    def epoch_batches(self) -> int | None:
        """Batches this rank yields in the current epoch; in exact mode from the manifest counts (None without
        them, an upper bound when shards are corrupt)."""
        dataset = self.dataset
        if dataset.resampled:
            return dataset.epoch_length
        counts = {shard.url: shard.samples for shard in dataset.shards}
        total = 0
        for worker in range(dataset.logical_workers):
            samples = [counts[url] for url in dataset.worker_shards(self.epoch, worker)]
            if None in samples:
                return None
            total += -(-sum(samples) // dataset.batch_size)
        return total

    def __iter__(self) -> Iterator[dict]:
        if self.dataset.resampled and self.batches == self.dataset.epoch_length:
            self._start_epoch(self.epoch + 1)  # stopped (or saved) right after the epoch's last batch
        self.dataset.position.copy_(
            torch.tensor([self.epoch, self.next_worker, *self.worker_batches, *self.worker_samples])
        )
        for batch in self.dataloader:
            worker, batches, samples = batch.pop(POSITION_KEY)
            self.worker_batches[worker], self.worker_samples[worker] = batches, samples
            self.next_worker = (worker + 1) % self.dataset.logical_workers
            self.batches += 1
            yield batch
        self._start_epoch(self.epoch + 1)

    def state_dict(self) -> dict[str, Any]:
        """Position after the last batch handed out, plus the arguments that fix the order (checked on load)."""
        dataset = self.dataset
        return {
            "epoch": self.epoch,
            "batches": self.batches,
            "next_worker": self.next_worker,
            "worker_batches": list(self.worker_batches),
            "worker_samples": list(self.worker_samples),
            **{name: getattr(dataset, name) for name in _LAYOUT_FIELDS},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`; the loader must have been built with the same seed, rank and layout."""
        state = {"length_bucket_batches": 0, "weights": [1.0], **state}  # states saved before bucketing / mixing
        for name in _LAYOUT_FIELDS:
            if state[name] != getattr(self.dataset, name):
                raise LoaderLayoutChanged(name, state[name], getattr(self.dataset, name))
        self.epoch, self.batches, self.next_worker = state["epoch"], state["batches"], state["next_worker"]
        self.worker_batches, self.worker_samples = list(state["worker_batches"]), list(state["worker_samples"])
