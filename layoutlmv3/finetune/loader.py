"""One rank's micro-batches of fine-tuning windows, with a position a checkpoint can hold.

Each epoch is a permutation of all windows seeded by (seed, epoch), the same on every rank; it is wrapped around
to a multiple of micro-batch x ranks (a few windows seen twice that epoch, none skipped), and rank r takes
every ranks-th micro-batch from it, so every rank draws the same number of batches per epoch and no rank waits
on another. The position (epoch, micro-batches drawn in it) restores the stream exactly; it belongs to one
rank count, and the trainer's universal resume starts the next epoch instead (training.runner).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

logger = logging.getLogger(__name__)


class WindowLoader:
    """Micro-batches of `dataset` for `rank` of `world_size`; iterating continues from the saved position to the
    end of the current epoch (the trainer iterates again for the next)."""

    def __init__(self, dataset: Dataset, micro_batch: int, rank: int, world_size: int, seed: int) -> None:
        if len(dataset) == 0:
            raise ValueError("no training windows: the training pages have no words")
        self.dataset, self.micro_batch, self.rank, self.world_size, self.seed = (
            dataset,
            micro_batch,
            rank,
            world_size,
            seed,
        )
        self.epoch, self.drawn = 0, 0

    def batches_per_epoch(self) -> int:
        """Micro-batches each rank draws per epoch (the windows, rounded up to whole rounds of all ranks)."""
        per_round = self.micro_batch * self.world_size
        return -(-len(self.dataset) // per_round)

    def order(self, epoch: int) -> list[int]:
        """Window indices of this rank's micro-batches in `epoch`, concatenated."""
        count = len(self.dataset)
        permutation = np.random.default_rng([self.seed, epoch]).permutation(count)
        total = self.batches_per_epoch() * self.micro_batch * self.world_size
        wrapped = np.resize(permutation, total)  # repeats from the start to fill the last round
        rounds = wrapped.reshape(-1, self.world_size, self.micro_batch)
        return rounds[:, self.rank].reshape(-1).tolist()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = self.order(self.epoch)
        while self.drawn < self.batches_per_epoch():
            start = self.drawn * self.micro_batch
            batch = default_collate([self.dataset[index] for index in order[start : start + self.micro_batch]])
            self.drawn += 1
            yield batch
        self.epoch, self.drawn = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "drawn": self.drawn,
            "windows": len(self.dataset),
            "world_size": self.world_size,
            "micro_batch": self.micro_batch,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`. A position of other windows or another seed is refused (the stream would
        silently differ); one of another rank count or micro-batch cannot be mapped, so the next epoch starts."""
        saved = {key: state.get(key) for key in ("windows", "seed", "world_size", "micro_batch")}
        current = {"windows": len(self.dataset), "seed": self.seed, "world_size": self.world_size}
        current["micro_batch"] = self.micro_batch
        if (saved["windows"], saved["seed"]) != (current["windows"], current["seed"]):
            raise ValueError(
                f"the loader position was saved for {saved['windows']} windows with seed {saved['seed']}; this run "
                f"has {current['windows']} windows with seed {current['seed']}: the training data or split changed"
            )
        if saved != current:  # another split of the same windows: the position cannot be mapped onto it
            logger.warning(
                "the loader position was saved on %s ranks with micro-batch %s (now %d, %d): starting epoch %d",
                saved["world_size"], saved["micro_batch"], self.world_size, self.micro_batch, int(state["epoch"]) + 1,
            )  # fmt: skip
            self.epoch, self.drawn = int(state["epoch"]) + 1, 0
            return
        self.epoch, self.drawn = int(state["epoch"]), int(state["drawn"])
