"""Fine-tuning a token classifier (entity labelling of FUNSD-format forms or CORD receipts) as a job of the one
trainer, so it runs on N ranks with DeepSpeed (ZeRO, bf16/fp16, accumulation to `train.global_batch_size`) and
resumes exactly after a preemption. Selection, export and scoring: `finetune.task_base`; the pages and their
label set: `finetune.splits`."""

from __future__ import annotations

import logging

import torch

from layoutlmv3.model import LayoutLMv3ForTokenClassification
from layoutlmv3.training.engine import Training

from .config import FinetuneConfig
from .dataset import WindowDataset
from .evaluate import merge_pages, score_pages, window_rows
from .splits import read_splits
from .task_base import BEST_DIR, RESULTS_FILE, SELECTION_FILE, FinetuneJobBase, SelectionTask, sharded_map

__all__ = ["BEST_DIR", "RESULTS_FILE", "SELECTION_FILE", "FinetuneJob", "TokenClassificationTask"]

logger = logging.getLogger(__name__)


class FinetuneJob(FinetuneJobBase):
    """The pages of the three splits as windows, the tokenizer, the token classifier."""

    model_class = LayoutLMv3ForTokenClassification

    def __init__(self, config: FinetuneConfig) -> None:
        data = config.data
        labels, self.pages = read_splits(data, config.train.seed)
        logger.info("pages: %s", ", ".join(f"{len(pages)} {name}" for name, pages in self.pages.items()))
        logger.info("labels (%d): %s", len(labels), " ".join(labels))
        super().__init__(config, labels)
        continuation = [labels.index(label.replace("B-", "I-", 1)) for label in labels]
        self.datasets = {
            name: WindowDataset(
                pages, self.tokenizer, data.max_length, data.stride, self.model.config.input_size,
                continuation if data.sub_tokens == "all" and name == "train" else None,
                drop_unlabelled=name == "train",
            )
            for name, pages in self.pages.items()
        }  # fmt: skip

    def make_task(self, training: Training) -> TokenClassificationTask:
        return TokenClassificationTask(self, training)


class TokenClassificationTask(SelectionTask):
    """Cross-entropy on each word's first sub-token (or every sub-token); entity F1 selects (seqeval)."""

    metric = "f1"

    def score(self, model: torch.nn.Module, split: str, lockstep: bool) -> dict:
        dataset, pages = self.job.datasets[split], self.job.pages[split]
        rows = sharded_map(lambda batch: window_rows(model, batch), dataset, self.training.micro_batch_size, lockstep)
        return score_pages(merge_pages([len(page.words) for page in pages], rows), pages, self.job.labels)
