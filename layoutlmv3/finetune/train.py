"""Fine-tune a LayoutLMv3 model on FUNSD-format forms (one process, CPU or one GPU).

The dev split (a seeded fraction of training_data) picks the best checkpoint by entity F1; the test split is
scored once, with that best model, at the end. The best model is saved in the `from_pretrained` format with
the tokenizer and label names, so `launch/predict.py` can use it directly.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from layoutlmv3.model import LayoutLMv3ForTokenClassification
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer
from layoutlmv3.training.schedule import learning_rate

from .config import FinetuneConfig
from .dataset import MODEL_INPUTS, WindowDataset
from .evaluate import evaluate
from .funsd import LABELS, SPLITS, Page, read_split

logger = logging.getLogger(__name__)

BEST_DIR = "best"
RESULTS_FILE = "results.json"


def split_dev(pages: list[Page], fraction: float, seed: int) -> tuple[list[Page], list[Page]]:
    """(train, dev): a seeded shuffle of the page ids, the first `fraction` (at least one page) held out."""
    ids = sorted(page.id for page in pages)
    random.Random(seed).shuffle(ids)
    dev_ids = set(ids[: max(1, round(len(ids) * fraction))])
    return [p for p in pages if p.id not in dev_ids], [p for p in pages if p.id in dev_ids]


def data_root(config: FinetuneConfig) -> Path:
    """The FUNSD-format root data.dir (launch/finetune.py writes synthetic forms there when --data is not given:
    the library reads data, data_prep makes it)."""
    if not config.data.dir:
        raise ValueError("data.dir is not set: a FUNSD-format root with training_data/ and testing_data/")
    return Path(config.data.dir)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def finetune(config: FinetuneConfig) -> dict:
    """Train, select on dev, score on test; returns (and writes to output.dir/results.json) the scores."""
    settings, out = config.train, Path(config.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    device = pick_device(settings.device)
    root = data_root(config)
    train_pages, dev_pages = split_dev(
        read_split(root / SPLITS[0], config.data.boxes), config.data.dev_fraction, settings.seed
    )
    test_pages = read_split(root / SPLITS[1], config.data.boxes)
    logger.info("pages: %d train, %d dev, %d test", len(train_pages), len(dev_pages), len(test_pages))

    tokenizer = LayoutLMv3Tokenizer.from_pretrained(config.model.path)
    id2label = dict(enumerate(LABELS))
    load = (
        LayoutLMv3ForTokenClassification.from_pretrained
        if config.model.init == "pretrained"
        else LayoutLMv3ForTokenClassification.from_config_of
    )
    model = load(config.model.path, num_labels=len(LABELS), id2label=id2label, **config.model.overrides).to(device)
    logger.info("model: %s (%s weights)", config.model.path, config.model.init)
    image_size = model.config.input_size

    def loader(pages: list[Page], shuffle: bool) -> DataLoader:
        dataset = WindowDataset(pages, tokenizer, config.data.max_length, config.data.stride, image_size)
        generator = torch.Generator().manual_seed(settings.seed)
        return DataLoader(
            dataset, settings.batch_size, shuffle=shuffle, generator=generator, num_workers=config.data.num_workers
        )

    train_loader, dev_loader, test_loader = (
        loader(train_pages, True),
        loader(dev_pages, False),
        loader(test_pages, False),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    writer = SummaryWriter(out / "tensorboard")
    (out / "finetune_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    best_f1, best_step, history = -1.0, 0, []
    batches = _endless(train_loader)
    for step in tqdm(range(1, settings.steps + 1), desc="fine-tune", disable=not config.output.progress):
        model.train()
        rate = learning_rate(step, settings.steps, settings.lr, settings.warmup_ratio)
        for group in optimizer.param_groups:
            group["lr"] = rate
        batch = next(batches)
        inputs = {name: batch[name].to(device) for name in (*MODEL_INPUTS, "labels")}
        loss = model(**inputs).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        writer.add_scalar("train/loss", loss.item(), step)
        writer.add_scalar("train/lr", rate, step)
        if step % settings.eval_every == 0 or step == settings.steps:
            scores = evaluate(model, dev_loader, dev_pages, LABELS)
            for name in ("precision", "recall", "f1"):
                writer.add_scalar(f"dev/{name}", scores[name], step)
            logger.info("step %d | loss %.4f | dev F1 %.4f", step, loss.item(), scores["f1"])
            history.append({"step": step, "loss": loss.item(), "dev_f1": scores["f1"]})
            if scores["f1"] > best_f1:
                best_f1, best_step = scores["f1"], step
                model.save_pretrained(out / BEST_DIR)
                tokenizer.save_pretrained(out / BEST_DIR)

    best = LayoutLMv3ForTokenClassification.from_pretrained(out / BEST_DIR).to(device)
    test = evaluate(best, test_loader, test_pages, LABELS)
    writer.add_scalar("test/f1", test["f1"], best_step)
    writer.close()
    results = {"best_step": best_step, "dev_f1": best_f1, "test": test, "dev_history": history}
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    logger.info(
        "best dev F1 %.4f at step %d; test F1 %.4f (P %.4f, R %.4f)",
        best_f1,
        best_step,
        test["f1"],
        test["precision"],
        test["recall"],
    )
    return results


def _endless(loader: DataLoader) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        yield from loader
