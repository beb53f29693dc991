"""Pretraining learns: a tiny model trained 1400 steps on the synthetic corpus, through the real pipeline
(synthetic pages -> BPE -> shards -> loader -> masking collator -> frozen image tokenizer), drives the MLM, MIM
and WPA losses clearly down.

WPA is the slow one: it sits at the entropy of its labels (about 0.65 nats here: roughly a third of the
labelled tokens are unaligned) until attention has learnt to find the patches under a token's box, then falls
below it. When it leaves that plateau varies from run to run (seed, thread count): steps 950, 1150 and 1250 in
three runs. Its bound is taken against the label entropy of the same steps, so learning the label frequencies
alone cannot meet it. The 3000-step curve of the DeepSpeed launcher is in the README.

The recipe is the tiny question-answering one's: no dropout (a 0.3M-parameter model needs none, and on CPU the
attention dropout's random draws cost a fifth of each step) and lr 4e-3. Measured 2026-12-07 on dev-2c (means of
30 steps; the bounds ask 0.05 below the start and 0.03 below the label entropy): WPA 0.400 / 0.354 at step 1400 on
one thread, 0.357 / 0.307 with another model seed, 0.341 / 0.288 on two threads; MLM ends at about 0.51 and MIM
at 0.10-0.11 of their starts (the bounds ask 0.85). The old recipe (dropout 0.1, lr 2e-3) gave 0.166 / 0.114 in
the same steps, in a fifth more time.

The corpus is 24 pages, so the loader's epoch is 3 batches: its shuffle buffer holds the corpus once (24), not the
default 1000 raw samples that every epoch would refill by re-reading the shards (0.11 -> 0.03 CPU s a batch, about
two minutes of the run).
"""

from __future__ import annotations

import itertools
import json
import math
import os

import pytest
import torch

from data_prep.build_shards import BuildConfig, build
from data_prep.synth import write_corpus
from layoutlmv3.data import build_train_loader
from layoutlmv3.data.collate import Collator
from layoutlmv3.model import LayoutLMv3Config
from layoutlmv3.pretraining.collator import PretrainingCollator
from layoutlmv3.pretraining.image_tokenizer import ImageTokenizer, ImageTokenizerConfig
from layoutlmv3.pretraining.model import LayoutLMv3ForPretraining
from layoutlmv3.pretraining.step import batch_to_device, pretraining_forward
from layoutlmv3.tokenizer import train_bpe

pytestmark = pytest.mark.slow  # trains
STEPS = 1400
LR = 4e-3
PAGES = 24  # the synthetic corpus
WINDOW = 30  # steps averaged at the start and at the end


def corpus_words(pages_dir) -> list[str]:
    return [
        word["text"]
        for path in sorted((pages_dir / "annotations").glob("*.json"))
        for entity in json.loads(path.read_text())["form"]
        for word in entity["words"]
    ]


def train_image_tokenizer(images: torch.Tensor, steps: int = 50) -> ImageTokenizer:
    """A briefly trained tiny VQ-VAE, so the MIM targets carry page structure (not an untrained hash)."""
    tokenizer = ImageTokenizer(ImageTokenizerConfig.from_flavor("tiny"))
    optimizer = torch.optim.AdamW(tokenizer.parameters(), lr=2e-3)
    for step in range(steps):
        batch = images[torch.randint(len(images), (16,), generator=torch.Generator().manual_seed(step))]
        output = tokenizer(batch)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
    return tokenizer.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def training_curve(tmp_path_factory):
    threads = torch.get_num_threads()
    # Alone on CI's two cores: 0.14 s a step instead of 0.20 on one thread (more buy little here); on one of `make
    # test`'s two xdist workers, one thread, the other worker has the other core.
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
    try:
        yield _train(tmp_path_factory.mktemp("convergence"))
    finally:
        torch.set_num_threads(threads)


def _train(root) -> list[dict]:
    write_corpus(root / "pages", pages=PAGES, seed=11)
    tokenizer = train_bpe(corpus_words(root / "pages"), vocab_size=700)
    tokenizer.save_pretrained(root / "tokenizer")
    build(BuildConfig(input=root / "pages", out=root / "shards", ocr="funsd", tokenizer_dir=root / "tokenizer",
                      max_samples_per_shard=6, progress_bar=False))  # fmt: skip
    collator = PretrainingCollator(
        Collator(max_length=64, seed=0), tokenizer.mask_token_id, tokenizer.vocab_size, tokenizer.special_token_ids
    )
    loader = build_train_loader(
        root / "shards", batch_size=8, num_workers=0, seed=0, collate_fn=collator, shuffle_buffer=PAGES
    )
    batches = itertools.chain.from_iterable(loader for _ in itertools.count())

    first = [next(batches) for _ in range(8)]
    image_tokenizer = train_image_tokenizer(torch.cat([b["tokenizer_pixel_values"] for b in first]))
    torch.manual_seed(0)
    config = LayoutLMv3Config.from_flavor(
        "tiny",
        vocab_size=tokenizer.vocab_size,
        visual_codebook_size=image_tokenizer.codebook_size,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = LayoutLMv3ForPretraining(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.98), weight_decay=0.01)
    curve = []
    for batch in itertools.islice(itertools.chain(first, batches), STEPS):
        output = pretraining_forward(model, image_tokenizer, batch_to_device(batch, "cpu"))
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        metrics = {name: value.item() for name, value in output.metrics().items()}
        labels = batch["wpa_labels"][batch["wpa_labels"] >= 0]
        metrics["wpa_label_entropy"] = binary_entropy(labels.float().mean().item())
        curve.append(metrics)
    return curve


def binary_entropy(p: float) -> float:
    """The loss of a predictor that knows only the share p of unaligned labels (nats)."""
    return 0.0 if p in (0.0, 1.0) else -(p * math.log(p) + (1 - p) * math.log(1 - p))


def mean_loss(curve: list[dict], objective: str) -> float:
    return sum(step[f"{objective}_loss"] for step in curve) / len(curve)


@pytest.mark.parametrize("objective", ["mlm", "mim"])
def test_mlm_and_mim_losses_go_clearly_down(training_curve, objective):
    start, end = mean_loss(training_curve[:WINDOW], objective), mean_loss(training_curve[-WINDOW:], objective)
    assert end < 0.85 * start, f"{objective}: {start:.3f} -> {end:.3f}"


def test_wpa_loss_goes_down_below_the_label_entropy(training_curve):
    start, end = mean_loss(training_curve[:WINDOW], "wpa"), mean_loss(training_curve[-WINDOW:], "wpa")
    entropy = sum(step["wpa_label_entropy"] for step in training_curve[-WINDOW:]) / WINDOW
    assert end < start - 0.05, f"wpa: {start:.3f} -> {end:.3f}"
    assert end < entropy - 0.03, f"wpa: {end:.3f} at the end, label entropy {entropy:.3f}"


def test_total_loss_is_the_sum_and_stays_finite(training_curve):
    for step in training_curve:
        assert abs(step["loss"] - (step["mlm_loss"] + step["mim_loss"] + step["wpa_loss"])) < 1e-4
        assert all(math.isfinite(value) for value in step.values())
