"""Pretraining learns: a tiny model trained 300 steps on the synthetic corpus, through the real pipeline
(synthetic pages -> BPE -> shards -> loader -> masking collator -> frozen image tokenizer), drives the MLM and
MIM losses clearly down.

WPA is not asserted here: next to MLM and MIM, the tiny model's WPA loss stays near ln 2 for these 300 steps
(0.695 -> 0.690 measured). Trained on WPA alone (lr 2e-3, random layouts) the same model's WPA loss falls from
0.66 to 0.21 between steps 150 and 250, so the head and the trainable 2D bias can learn the alignment; showing it
in the combined objective needs a longer run than a unit test affords (tracked in the objectives issue).
"""

from __future__ import annotations

import itertools
import json

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

STEPS = 300
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
    root = tmp_path_factory.mktemp("convergence")
    write_corpus(root / "pages", pages=24, seed=11)
    tokenizer = train_bpe(corpus_words(root / "pages"), vocab_size=700)
    tokenizer.save_pretrained(root / "tokenizer")
    build(BuildConfig(input=root / "pages", out=root / "shards", ocr="funsd", tokenizer_dir=root / "tokenizer",
                      max_samples_per_shard=6, progress_bar=False))  # fmt: skip
    collator = PretrainingCollator(
        Collator(max_length=64, seed=0), tokenizer.mask_token_id, tokenizer.vocab_size, tokenizer.special_token_ids
    )
    loader = build_train_loader(root / "shards", batch_size=8, num_workers=0, seed=0, collate_fn=collator)
    batches = itertools.chain.from_iterable(loader for _ in itertools.count())

    first = [next(batches) for _ in range(8)]
    image_tokenizer = train_image_tokenizer(torch.cat([b["tokenizer_pixel_values"] for b in first]))
    torch.manual_seed(0)
    config = LayoutLMv3Config.from_flavor(
        "tiny", vocab_size=tokenizer.vocab_size, visual_codebook_size=image_tokenizer.codebook_size
    )
    model = LayoutLMv3ForPretraining(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.98), weight_decay=0.01)
    curve = []
    for batch in itertools.islice(itertools.chain(first, batches), STEPS):
        output = pretraining_forward(model, image_tokenizer, batch_to_device(batch, "cpu"))
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        curve.append({name: value.item() for name, value in output.metrics().items()})
    return curve


def mean_loss(curve: list[dict], objective: str) -> float:
    return sum(step[f"{objective}_loss"] for step in curve) / len(curve)


@pytest.mark.parametrize("objective", ["mlm", "mim"])
def test_mlm_and_mim_losses_go_clearly_down(training_curve, objective):
    start, end = mean_loss(training_curve[:WINDOW], objective), mean_loss(training_curve[-WINDOW:], objective)
    assert end < 0.85 * start, f"{objective}: {start:.3f} -> {end:.3f}"


def test_total_loss_is_the_sum_and_stays_finite(training_curve):
    for step in training_curve:
        assert abs(step["loss"] - (step["mlm_loss"] + step["mim_loss"] + step["wpa_loss"])) < 1e-4
        assert all(value == value and abs(value) != float("inf") for value in step.values())
