"""The run's data: pretraining collators and the train / validation loaders, from the run config.

Training reads resampled shards (every rank the same number of batches per epoch: no rank waits on another);
validation reads exact epochs of the held-out shards with deterministic crops and masks.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from layoutlmv3.data import (
    Collator,
    ShardLoader,
    WeightedShards,
    build_train_loader,
    list_shards,
    read_manifest,
    total_samples,
)
from layoutlmv3.data.remote import DEFAULT_RETRY, RetryPolicy, is_remote, tar_files
from layoutlmv3.data.sample_format import MANIFEST_FILE, META_FILE
from layoutlmv3.json_files import parse_json
from layoutlmv3.pretraining.collator import PretrainingCollator
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer

from .run_config import RunConfig


def train_sources(config: RunConfig) -> str | list[WeightedShards]:
    """data.train_shards as the loader takes it: one source, or the weighted corpora of a mixture."""
    shards = config.data.train_shards
    if isinstance(shards, str):
        return shards
    return [WeightedShards(corpus.shards, corpus.weight) for corpus in shards]


def _patterns(config: RunConfig) -> list[str]:
    """The shard source of each training corpus."""
    sources = train_sources(config)
    return [sources] if isinstance(sources, str) else [corpus.shards for corpus in sources]


def remote_retry(config: RunConfig) -> RetryPolicy:
    """The run's policy for remote shards and manifests (data.remote_attempts, remote_retry_s, remote_deadline_s):
    every remote read of the run uses it, so a stalled server is cut off when the config says."""
    data = config.data
    return RetryPolicy(data.remote_attempts, data.remote_retry_s, data.remote_deadline_s)


def check_train_shards_tokenizer(config: RunConfig, tokenizer: LayoutLMv3Tokenizer) -> None:
    """Every training corpus (and the held-out shards) was tokenized with data.tokenizer, and an epoch's length is
    known: from the manifests, or data.epoch_batches."""
    retry = remote_retry(config)
    for source in _patterns(config):
        check_shards_tokenizer(source, tokenizer, retry)
    if config.data.epoch_batches is None and any(
        total_samples(list_shards(pattern, retry)) is None for pattern in _patterns(config)
    ):
        raise ValueError(
            "data.epoch_batches is needed: the training shards come without a manifest (a brace pattern, or a "
            f"folder without {MANIFEST_FILE}), so the number of batches per epoch is not known"
        )
    if config.data.val_shards is not None:
        check_shards_tokenizer(config.data.val_shards, tokenizer, retry)


def check_shards_tokenizer(shards: str, tokenizer: LayoutLMv3Tokenizer, retry: RetryPolicy = DEFAULT_RETRY) -> None:
    """Refuse shards tokenized with another vocabulary, before training: the manifest records the tokenizer's
    fingerprint; shards named by a pattern have none, so the first sample of the first shard is read instead
    (the loader then checks every sample's own fingerprint as it reads it). A remote manifest is read with `retry`
    (the run's data.remote_* settings: attempts and deadline)."""
    path = Path(shards)
    if path.is_dir() or path.name == MANIFEST_FILE:
        recorded, where = read_manifest(shards, retry)["tokenizer"], shards  # the str: it may be an http(s) URL
    else:
        first = list_shards(shards, retry)[0].url
        recorded, where = first_sample_tokenizer(first), first
        if recorded is None:
            return  # remote (read when training) or without a readable sample: the loader checks as it reads
    if recorded != tokenizer.fingerprint:
        raise ValueError(
            f"{where} were tokenized with tokenizer {recorded}, but data.tokenizer is {tokenizer.fingerprint}: "
            "rebuild the shards or point data.tokenizer at the vocabulary they were built with"
        )


def first_sample_tokenizer(shard: str) -> str | None:
    """The tokenizer fingerprint in the first meta.json of a local shard (None if remote or unreadable)."""
    if is_remote(shard):
        return None
    try:
        with open(shard, "rb") as file:  # the one tar reader of shards: its memory caps hold here too
            for _, data in tar_files(file, shard, select=lambda name: name.endswith(f".{META_FILE}")):
                return parse_json(data, shard)["tokenizer"]  # JsonFileError is a ValueError
    except (OSError, tarfile.TarError, ValueError, KeyError, TypeError):  # TypeError: a meta that is no object
        return None
    return None


def build_collator(
    config: RunConfig, tokenizer: LayoutLMv3Tokenizer, patches_per_side: int, crop: str
) -> PretrainingCollator:
    """Shaping (crop, pad, boxes) plus every pretraining mask and label, seeded by train.seed."""
    data, objectives = config.data, config.objectives
    base = Collator(data.max_length, data.pad_to, crop=crop, boxes=data.boxes, seed=config.train.seed)
    masking = objectives.masking(patches_per_side)
    return PretrainingCollator(
        base, tokenizer.mask_token_id, tokenizer.vocab_size, tokenizer.special_token_ids, masking
    )


# The run-config settings behind the loader's layout (the arguments build_loaders passes), to name in errors.
LOADER_SETTINGS = {
    "seed": "train.seed",
    "num_workers": "data.num_workers",
    "batch_size": "the micro-batch (train_micro_batch_size_per_gpu)",
    "epoch_length": "the epoch length (data.epoch_batches, or the manifests' sample counts when it is unset)",
    "length_bucket_batches": "data.length_bucket_batches",
    "weights": "the corpus weights of data.train_shards",
}


def build_loaders(
    config: RunConfig,
    tokenizer: LayoutLMv3Tokenizer,
    patches_per_side: int,
    batch_size: int,
    rank: int,
    world_size: int,
    pin_memory: bool,
) -> tuple[ShardLoader, ShardLoader | None]:
    """This rank's train loader and, with data.val_shards, its validation loader."""
    data = config.data
    retry = remote_retry(config)
    train = build_train_loader(
        train_sources(config),
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        num_workers=data.num_workers,
        seed=config.train.seed,
        epoch_length=data.epoch_batches,
        shuffle_buffer=data.shuffle_buffer,
        resampled=True,
        collate_fn=build_collator(config, tokenizer, patches_per_side, crop="random"),
        pin_memory=pin_memory,
        length_bucket_batches=data.length_bucket_batches,
        tokenizer=tokenizer.fingerprint,
        retry=retry,
    )
    if data.val_shards is None:
        return train, None
    shards = list_shards(data.val_shards, retry)
    # Fewer held-out shards than ranks: every rank evaluates all of them (same mean, no idle rank).
    split = (rank, world_size) if len(shards) >= world_size else (0, 1)
    val = build_train_loader(
        shards,
        batch_size=batch_size,
        rank=split[0],
        world_size=split[1],
        num_workers=data.num_workers,
        seed=config.train.seed,
        shuffle_buffer=0,
        resampled=False,
        collate_fn=build_collator(config, tokenizer, patches_per_side, crop="start"),
        pin_memory=pin_memory,
        tokenizer=tokenizer.fingerprint,
        retry=retry,
    )
    return train, val
