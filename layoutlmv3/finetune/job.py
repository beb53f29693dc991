"""Fine-tuning a token classifier on FUNSD-format forms as a job of the one trainer, so it runs on N ranks with
DeepSpeed (ZeRO, bf16/fp16, accumulation to `train.global_batch_size`) and resumes exactly after a preemption.

Model selection: every `logging.val_every` steps (and at the last) the live weights label the dev pages; a new
best entity F1 exports the model in the `from_pretrained` format, with the tokenizer and label names, to
OUTPUT/best (written beside it and swapped in, so a crash never leaves half a model). At the end the kept model
scores the test pages once: OUTPUT/results.json. The best score, its step and the dev history travel in
checkpoints, so a resumed run selects as the uninterrupted one would.

Evaluation is spread over the ranks (each labels every ranks-th batch of windows; the rows are gathered and
merged in page order), in lockstep under ZeRO-3, where every forward pass is a collective.
"""

from __future__ import annotations

import json
import logging
import shutil
from itertools import chain
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from torch.utils.data import default_collate

from layoutlmv3.model import LayoutLMv3ForTokenClassification
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer
from layoutlmv3.training.checkpointing import on_rank_zero
from layoutlmv3.training.engine import Training, check_special_ids, non_embedding_parameters
from layoutlmv3.training.metrics import encoder_work

from .config import FinetuneConfig
from .dataset import MODEL_INPUTS, WindowDataset
from .evaluate import WindowRow, merge_pages, score_pages, window_rows
from .loader import WindowLoader
from .splits import read_splits

logger = logging.getLogger(__name__)

BEST_DIR = "best"
RESULTS_FILE = "results.json"
SELECTION_FILE = "selection.json"  # in best/: the step and dev F1 it was kept for


class FinetuneJob:
    """The pages of the three splits as windows, the tokenizer, the classifier (the same weights on every rank)."""

    def __init__(self, config: FinetuneConfig) -> None:
        self.config = config
        data, seed = config.data, config.train.seed
        self.labels, self.pages = read_splits(data, seed)
        logger.info("pages: %s", ", ".join(f"{len(pages)} {name}" for name, pages in self.pages.items()))
        logger.info("labels (%d): %s", len(self.labels), " ".join(self.labels))
        self.tokenizer = LayoutLMv3Tokenizer.from_pretrained(config.model.path)
        load = (
            LayoutLMv3ForTokenClassification.from_pretrained
            if config.model.init == "pretrained"
            else LayoutLMv3ForTokenClassification.from_config_of
        )
        torch.manual_seed(seed)  # a fresh head (or a random init) equal on every rank
        self.model = load(
            config.model.path,
            num_labels=len(self.labels),
            id2label=dict(enumerate(self.labels)),
            **config.model.overrides,
        )
        check_special_ids(
            self.model.config,
            {
                "pad": self.tokenizer.pad_token_id,
                "cls": self.tokenizer.cls_token_id,
                "sep": self.tokenizer.sep_token_id,
            },
        )
        self.non_embedding = non_embedding_parameters(self.model)  # before ZeRO-3 partitions the weights
        continuation = [self.labels.index(label.replace("B-", "I-", 1)) for label in self.labels]
        self.datasets = {
            name: WindowDataset(
                pages, self.tokenizer, data.max_length, data.stride, self.model.config.input_size,
                continuation if data.sub_tokens == "all" and name == "train" else None,
            )
            for name, pages in self.pages.items()
        }  # fmt: skip
        self.tokenizer_fingerprint = self.tokenizer.fingerprint
        self.description = f"{config.model.path} ({config.model.init} weights)"

    def make_task(self, training: Training) -> TokenClassificationTask:
        return TokenClassificationTask(self, training)


class TokenClassificationTask:
    """Cross-entropy on each word's first sub-token; dev entity F1 selects the model; test F1 at the end."""

    metric_names = ("loss",)

    def __init__(self, job: FinetuneJob, training: Training) -> None:
        self.job, self.training = job, training
        self.out = Path(job.config.output.dir)
        self.loader = WindowLoader(
            job.datasets["train"], training.micro_batch_size, training.rank, training.world_size, job.config.train.seed
        )
        self.best_f1, self.best_step, self.history = -1.0, 0, []

    def forward(self, batch: dict) -> list[torch.Tensor]:
        device = self.training.device
        inputs = {name: batch[name].to(device, non_blocking=True) for name in (*MODEL_INPUTS, "labels")}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.training.dtype)
        return [self.training.engine(**inputs).loss]

    def work(self, batch: dict) -> tuple[float, float, float]:
        return encoder_work(self.job.model.config, self.job.non_embedding, batch)

    def validate(self, step: int) -> dict[str, float]:
        """Dev entity scores of the live weights; a new best is exported to OUTPUT/best (collective)."""
        engine = self.training.engine
        engine.eval()
        scores = self._score(engine, "dev", lockstep=self.training.zero_stage == 3)
        engine.train()
        self.history.append({"step": step, **{f"dev_{name}": scores[name] for name in ("precision", "recall", "f1")}})
        if scores["f1"] > self.best_f1:
            self.best_f1, self.best_step = scores["f1"], step
            self._export_best(step)
        return {f"val/{name}": scores[name] for name in ("precision", "recall", "f1")}

    def finish(self) -> None:
        """The kept model on the test pages, once; rank 0 writes OUTPUT/results.json."""
        kept = _selection(self.out / BEST_DIR)
        if kept.get("step") != self.best_step and "step" in kept:
            # Exported by an interrupted attempt after its last checkpoint and not beaten on the replay (GPU
            # replays are not bit-exact): what best/ holds is reported, with its own step and dev score.
            logger.warning(
                "%s holds the model of step %d (dev F1 %.4f), exported after the checkpoint this run resumed from "
                "and not beaten since: it is the one scored",
                self.out / BEST_DIR,
                kept["step"],
                kept["dev_f1"],
            )
            self.best_step, self.best_f1 = kept["step"], kept["dev_f1"]
        best = LayoutLMv3ForTokenClassification.from_pretrained(self.out / BEST_DIR).to(self.training.device).eval()
        test = self._score(best, "test", lockstep=False)
        results = {"best_step": self.best_step, "dev_f1": self.best_f1, "test": test, "dev_history": self.history}
        on_rank_zero(
            lambda: (self.out / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n"),
            f"{self.out / RESULTS_FILE} not written",
        )
        if self.training.rank == 0:
            logger.info(
                "best dev F1 %.4f at step %d; test F1 %.4f (P %.4f, R %.4f): %s",
                self.best_f1,
                self.best_step,
                test["f1"],
                test["precision"],
                test["recall"],
                self.out / RESULTS_FILE,
            )

    def state_dict(self) -> dict[str, Any]:
        return {"best_f1": self.best_f1, "best_step": self.best_step, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_f1, self.best_step = state.get("best_f1", -1.0), state.get("best_step", 0)
        self.history = list(state.get("history", []))

    def _score(self, model: torch.nn.Module, split: str, lockstep: bool) -> dict:
        rows = sharded_rows(model, self.job.datasets[split], self.training.micro_batch_size, lockstep)
        pages = self.job.pages[split]
        return score_pages(merge_pages([len(page.words) for page in pages], rows), pages, self.job.labels)

    def _export_best(self, step: int) -> None:
        """The live weights (gathered under ZeRO-3) in the `from_pretrained` format, written by rank 0 beside
        best/ and swapped in; a failed write stops every rank with exit 4 (checkpointing.on_rank_zero)."""
        module = self.training.engine.module

        def write() -> None:
            best, staged, previous = (self.out / name for name in (BEST_DIR, f"{BEST_DIR}.new", f"{BEST_DIR}.old"))
            shutil.rmtree(staged, ignore_errors=True)
            module.save_pretrained(staged)
            self.job.tokenizer.save_pretrained(staged)
            (staged / SELECTION_FILE).write_text(json.dumps({"step": step, "dev_f1": self.best_f1}) + "\n")
            shutil.rmtree(previous, ignore_errors=True)
            if best.exists():
                best.rename(previous)
            staged.rename(best)
            shutil.rmtree(previous, ignore_errors=True)

        with deepspeed.zero.GatheredParameters(list(module.parameters()), enabled=self.training.zero_stage == 3):
            on_rank_zero(write, f"the model of step {step} not exported to {self.out / BEST_DIR}")


def _selection(directory: Path) -> dict:
    try:
        return json.loads((directory / SELECTION_FILE).read_text())
    except (OSError, ValueError):
        return {}


def sharded_rows(model: torch.nn.Module, dataset: WindowDataset, batch_size: int, lockstep: bool) -> list[WindowRow]:
    """Every window of `dataset` through `model`, batches dealt round-robin to the ranks, rows gathered on all of
    them in dataset order. `lockstep`: a rank without a batch in a round runs a spare one (ZeRO-3 forwards are
    collectives, so every rank must run as many)."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    starts = list(range(0, len(dataset), batch_size))
    mine: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    for round_start in range(0, len(starts), world_size):
        index = round_start + rank
        if index < len(starts):
            windows = range(starts[index], min(starts[index] + batch_size, len(dataset)))
            rows = window_rows(model, default_collate([dataset[i] for i in windows]))
            mine += [(window, word_ids, probabilities) for window, (_, word_ids, probabilities) in zip(windows, rows)]
        elif lockstep:
            window_rows(model, default_collate([dataset[i] for i in range(min(batch_size, len(dataset)))]))
    gathered: list[list | None] = [None] * world_size
    dist.all_gather_object(gathered, mine)
    ordered = sorted(chain.from_iterable(gathered), key=lambda row: row[0])
    return [(dataset.windows[window].page, word_ids, probabilities) for window, word_ids, probabilities in ordered]
