"""What every fine-tuning task shares on the one trainer: the job's model, tokenizer and data made before the
process group, the forward pass of labelled batches, and model selection on N ranks.

Model selection: every `logging.val_every` steps (and at the last) the live weights score the dev split; a new
best of the task's `metric` exports the model in the `from_pretrained` format, with the tokenizer and label
names, to OUTPUT/best (written beside it and swapped in, so a crash never leaves half a model). At the end the
kept model scores the test split once: OUTPUT/results.json. The best score, its step and the dev history travel
in checkpoints, so a resumed run selects as the uninterrupted one would.

Evaluation is spread over the ranks (`sharded_map`: each rank runs every ranks-th batch, results gathered in
dataset order), in lockstep under ZeRO-3, where every forward pass is a collective.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, default_collate

from layoutlmv3.atomic_files import directory_in_place
from layoutlmv3.model import LayoutLMv3PreTrainedModel
from layoutlmv3.processing import write_processing_settings
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer
from layoutlmv3.training.checkpointing import on_rank_zero
from layoutlmv3.training.engine import Training, non_embedding_parameters
from layoutlmv3.training.metrics import encoder_work
from layoutlmv3.training.model_checks import check_max_length, check_special_ids

from .config import FinetuneConfig
from .dataset import model_inputs
from .loader import WindowLoader

logger = logging.getLogger(__name__)

BEST_DIR = "best"
RESULTS_FILE = "results.json"
SELECTION_FILE = "selection.json"  # in best/: the step and dev score it was kept for


class FinetuneJobBase:
    """The tokenizer and the model (a fresh head, or random weights, equal on every rank) with `labels` as its
    id2label; subclasses read their data into `self.datasets` ({"train", "dev", "test"})."""

    model_class: type[LayoutLMv3PreTrainedModel]

    def __init__(self, config: FinetuneConfig, labels: tuple[str, ...]) -> None:
        self.config, self.labels = config, labels
        self.tokenizer = LayoutLMv3Tokenizer.from_pretrained(config.model.path)
        load = (
            self.model_class.from_pretrained if config.model.init == "pretrained" else self.model_class.from_config_of
        )
        torch.manual_seed(config.train.seed)
        self.model = load(
            config.model.path, num_labels=len(labels), id2label=dict(enumerate(labels)), **config.model.overrides
        )
        special = {"pad": self.tokenizer.pad_token_id, "cls": self.tokenizer.cls_token_id}
        check_special_ids(self.model.config, {**special, "sep": self.tokenizer.sep_token_id})
        check_max_length(self.model.config, config.data.max_length)
        self.non_embedding = non_embedding_parameters(self.model)  # before ZeRO-3 partitions the weights
        self.tokenizer_fingerprint = self.tokenizer.fingerprint
        self.description = f"{config.model.path} ({config.model.init} weights)"
        self.datasets: dict[str, Dataset] = {}


class SelectionTask:
    """A fine-tuning task: subclasses name the selecting `metric` and score a split (`score`)."""

    metric_names = ("loss",)
    metric = "f1"  # the dev score that selects the kept model

    def __init__(self, job: FinetuneJobBase, training: Training) -> None:
        self.job, self.training = job, training
        self.out = Path(job.config.output.dir)
        self.loader = WindowLoader(
            job.datasets["train"], training.micro_batch_size, training.rank, training.world_size, job.config.train.seed
        )
        self.best_score, self.best_step, self.history = -1.0, 0, []

    def score(self, model: torch.nn.Module, split: str, lockstep: bool) -> dict[str, Any]:
        """The task's scores of `model` on a split ({metric: ..., other figures}); a collective."""
        raise NotImplementedError

    def forward(self, batch: dict) -> list[torch.Tensor]:
        inputs = model_inputs(batch, self.job.model.config, self.training.device, self.training.dtype, ("labels",))
        return [self.training.engine(**inputs).loss]

    def work(self, batch: dict) -> tuple[float, float, float]:
        return encoder_work(self.job.model.config, self.job.non_embedding, batch)

    def validate(self, step: int) -> dict[str, float]:
        """Dev scores of the live weights; a new best is exported to OUTPUT/best (collective)."""
        engine = self.training.engine
        engine.eval()
        started = time.perf_counter()  # minutes on a big dev split: a line when it starts and when it ends
        logger.info("step %d: scoring the dev split", step)
        scores = _scalars(self.score(engine, "dev", lockstep=self.training.zero_stage == 3))
        logger.info(
            "step %d: dev %s %.4f (%.0f s)", step, self.metric, scores[self.metric], time.perf_counter() - started
        )
        engine.train()
        self.history.append({"step": step, **{f"dev_{name}": value for name, value in scores.items()}})
        if scores[self.metric] > self.best_score:
            self.best_score, self.best_step = scores[self.metric], step
            self._export_best(step)
        return {f"val/{name}": value for name, value in scores.items()}

    def finish(self) -> None:
        """The kept model on the test split, once; rank 0 writes OUTPUT/results.json."""
        kept = _selection(self.out / BEST_DIR)
        if "step" in kept and kept["step"] != self.best_step:
            # Exported by an interrupted attempt after its last checkpoint and not beaten on the replay (GPU
            # replays are not bit-exact): what best/ holds is reported, with its own step and dev score.
            logger.warning(
                "%s holds the model of step %d (dev %s %.4f), exported after the checkpoint this run resumed from "
                "and not beaten since: it is the one scored",
                self.out / BEST_DIR, kept["step"], self.metric, kept["dev_score"],
            )  # fmt: skip
            self.best_step, self.best_score = kept["step"], kept["dev_score"]
        best = self.job.model_class.from_pretrained(self.out / BEST_DIR).to(self.training.device).eval()
        started = time.perf_counter()
        logger.info("scoring the kept model (step %d) on the test split", self.best_step)
        test = self.score(best, "test", lockstep=False)
        logger.info("test split scored (%.0f s)", time.perf_counter() - started)
        results = {
            "best_step": self.best_step,
            f"dev_{self.metric}": self.best_score,
            "test": test,
            "dev_history": self.history,
        }
        write = lambda: (self.out / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")  # noqa: E731
        on_rank_zero(write, f"{self.out / RESULTS_FILE} not written")
        self.write_extras(test)
        if self.training.rank == 0:
            figures = ", ".join(f"{name} {value:.4f}" for name, value in _scalars(test).items())
            logger.info(
                "best dev %s %.4f at step %d; test %s: %s",
                self.metric, self.best_score, self.best_step, figures, self.out / RESULTS_FILE,
            )  # fmt: skip

    def write_extras(self, test: dict[str, Any]) -> None:
        """Files a task adds beside results.json (rank 0 writes them; a collective)."""

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_step": self.best_step, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_score, self.best_step = state.get("best_score", -1.0), state.get("best_step", 0)
        self.history = list(state.get("history", []))
        if self.best_step and not (self.out / BEST_DIR / SELECTION_FILE).is_file():
            # Checkpoints copied or resumed into another output.dir (or best/ deleted): the kept model is not here,
            # so selection starts again, or the end would score a model that does not exist.
            logger.warning(
                "the model kept at step %d (dev %s %.4f) is not in %s: model selection starts again",
                self.best_step, self.metric, self.best_score, self.out / BEST_DIR,
            )  # fmt: skip
            self.best_score, self.best_step = -1.0, 0

    def _export_best(self, step: int) -> None:
        """The live weights (gathered under ZeRO-3) in the `from_pretrained` format, written by rank 0 beside
        best/ and swapped in; a failed write stops every rank with exit 4 (checkpointing.on_rank_zero)."""
        module = self.training.engine.module

        def write() -> None:
            with directory_in_place(self.out / BEST_DIR) as staged:
                module.save_pretrained(staged)
                self.job.tokenizer.save_pretrained(staged)
                (staged / SELECTION_FILE).write_text(json.dumps({"step": step, "dev_score": self.best_score}) + "\n")
                data = self.job.config.data
                processing = {"max_length": data.max_length, "stride": data.stride, "boxes": data.boxes}
                write_processing_settings(staged, processing)

        with deepspeed.zero.GatheredParameters(list(module.parameters()), enabled=self.training.zero_stage == 3):
            on_rank_zero(write, f"the model of step {step} not exported to {self.out / BEST_DIR}")


def _scalars(scores: dict[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in scores.items() if isinstance(value, int | float)}


def _selection(directory: Path) -> dict:
    try:
        return json.loads((directory / SELECTION_FILE).read_text())
    except (OSError, ValueError):
        return {}


def sharded_map(run: Callable[[dict], list], dataset: Dataset, batch_size: int, lockstep: bool) -> list:
    """`run(batch)` -> one result per item, over every item of `dataset`: batches dealt round-robin to the
    ranks, results gathered on all of them in dataset order. `lockstep`: a rank without a batch in a round runs
    a spare one (ZeRO-3 forwards are collectives, so every rank must run as many)."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    starts = list(range(0, len(dataset), batch_size))
    mine: list[tuple[int, Any]] = []
    for round_start in range(0, len(starts), world_size):
        index = round_start + rank
        if index < len(starts):
            items = range(starts[index], min(starts[index] + batch_size, len(dataset)))
            mine += zip(items, run(default_collate([dataset[i] for i in items])), strict=True)
        elif lockstep:
            run(default_collate([dataset[i] for i in range(min(batch_size, len(dataset)))]))
    gathered: list[list | None] = [None] * world_size
    dist.all_gather_object(gathered, mine)
    return [result for _, result in sorted(chain.from_iterable(gathered), key=lambda pair: pair[0])]
