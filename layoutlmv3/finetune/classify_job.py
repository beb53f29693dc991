"""Document classification (RVL-CDIP's task: which kind of document is this page?) as a job of the one trainer:
`LayoutLMv3ForSequenceClassification` on each page's first window (the <s> token sees text, layout and image),
accuracy selects the kept model, and the test split gets accuracy, a per-class report and a confusion matrix
(OUTPUT/results.json, OUTPUT/confusion.png). Pages and classes: `finetune.classes`."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from layoutlmv3.model import LayoutLMv3ForSequenceClassification
from layoutlmv3.processing import LayoutLMv3Processor
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer
from layoutlmv3.training.checkpointing import on_rank_zero
from layoutlmv3.training.engine import Training

from .classes import ClassifiedPage, class_names, read_class_split
from .config import FinetuneConfig
from .dataset import model_config, model_inputs
from .splits import split_dev
from .task_base import FinetuneJobBase, SelectionTask, sharded_map

logger = logging.getLogger(__name__)

CONFUSION_FILE = "confusion.png"


class PageDataset(Dataset):
    """One fixed-length window per page (its first `max_length` tokens, from the page processor's call) with the
    page image and class."""

    def __init__(self, pages: list[ClassifiedPage], tokenizer: LayoutLMv3Tokenizer, max_length: int, size: int) -> None:
        processor = LayoutLMv3Processor(tokenizer, size, max_length, stride=0)
        self.items = []
        for page in pages:
            with Image.open(page.image_path) as image:
                inputs = processor(image, page.words, page.boxes, boxes_normalized=True, page_label=page.label)
            self.items.append(inputs.window(0))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]


class ClassificationJob(FinetuneJobBase):
    """train/, test/ (and val/ as the dev split, else a seeded fraction of train) of a document-class root."""

    model_class = LayoutLMv3ForSequenceClassification

    def __init__(self, config: FinetuneConfig) -> None:
        data = config.data
        if not data.dir:
            raise ValueError("data.dir is not set: a root with train/ and test/ (a folder per class, or SPLIT.txt)")
        root = Path(data.dir)
        classes = tuple(data.classes) if data.classes else class_names(root / "train")
        train = read_class_split(root / "train", classes, data.boxes)
        has_val = (root / "val").is_dir() or (root / "val.txt").is_file()
        dev = read_class_split(root / "val", classes, data.boxes) if has_val else None
        if dev is None:
            train, dev = split_dev(train, data.dev_fraction, config.train.seed)
        self.pages = {"train": train, "dev": dev, "test": read_class_split(root / "test", classes, data.boxes)}
        logger.info("pages: %s; classes (%d): %s", ", ".join(f"{len(p)} {n}" for n, p in self.pages.items()),
                    len(classes), " ".join(classes))  # fmt: skip
        super().__init__(config, classes)
        size = self.model.config.input_size
        self.datasets = {
            name: PageDataset(pages, self.tokenizer, data.max_length, size) for name, pages in self.pages.items()
        }

    def make_task(self, training: Training) -> ClassificationTask:
        return ClassificationTask(self, training)


class ClassificationTask(SelectionTask):
    """Cross-entropy over the classes; accuracy selects."""

    metric = "accuracy"

    def score(self, model: torch.nn.Module, split: str, lockstep: bool) -> dict:
        predicted = sharded_map(
            lambda batch: _predict(model, batch), self.job.datasets[split], self.training.micro_batch_size, lockstep
        )
        gold = [page.label for page in self.job.pages[split]]
        return class_scores(gold, predicted, self.job.labels)

    def write_extras(self, test: dict) -> None:
        path = Path(self.job.config.output.dir) / CONFUSION_FILE
        on_rank_zero(lambda: draw_confusion(test["confusion"], self.job.labels).save(path), f"{path} not written")


@torch.no_grad()
def _predict(model: torch.nn.Module, batch: dict) -> list[int]:
    parameter = next(model.parameters())
    inputs = model_inputs(batch, model_config(model), parameter.device, parameter.dtype)
    return model(**inputs).logits.argmax(-1).tolist()


def class_scores(gold: list[int], predicted: list[int], classes: tuple[str, ...]) -> dict:
    """Accuracy, per-class precision/recall/F1/support, and the confusion matrix (rows: true, columns: predicted)."""
    confusion = [[0] * len(classes) for _ in classes]
    for truth, guess in zip(gold, predicted, strict=True):
        confusion[truth][guess] += 1
    per_class = {}
    for index, name in enumerate(classes):
        hits = confusion[index][index]
        predicted_count = sum(row[index] for row in confusion)
        support = sum(confusion[index])
        precision = hits / predicted_count if predicted_count else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    accuracy = sum(confusion[i][i] for i in range(len(classes))) / max(len(gold), 1)
    return {"accuracy": accuracy, "per_class": per_class, "confusion": confusion}


def draw_confusion(confusion: list[list[int]], classes: tuple[str, ...], cell: int = 36) -> Image.Image:
    """The confusion matrix as a picture: rows are the true classes, columns the predicted ones, darker = more."""
    margin = 8 + 7 * max(len(name) for name in classes)
    size = margin + cell * len(classes) + 8
    image = Image.new("RGB", (size, size + 16), "white")
    pen = ImageDraw.Draw(image)
    peak = max(max(row) for row in confusion) or 1
    for row, counts in enumerate(confusion):
        pen.text((4, margin + row * cell + cell // 3), classes[row], fill="black")
        for column, count in enumerate(counts):
            shade = 255 - round(200 * count / peak)
            box = [margin + column * cell, margin + row * cell, margin + (column + 1) * cell, margin + (row + 1) * cell]
            pen.rectangle(box, fill=(shade, shade, 255), outline="gray")
            pen.text((box[0] + cell // 3, box[1] + cell // 3), str(count), fill="black" if shade > 120 else "white")
    for column, name in enumerate(classes):
        pen.text((margin + column * cell + 2, 4 + (column % 2) * 12), name[:6], fill="black")
    pen.text((margin, size), "rows: true class, columns: predicted", fill="gray")
    return image
