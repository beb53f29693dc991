"""Smoke run of the whole model stack on a generated page, with nothing downloaded.

A synthetic form page -> a BPE vocabulary (the official one with --tokenizer, else one trained here on synthetic
text) -> tokens + boxes -> a tiny LayoutLMv3 token classifier (text + image) -> per-word predictions; then the
model is saved in our format and in transformers' format, reloaded by both libraries, and checked for equal
outputs. (Later stages of the project turn this into corpus -> pretrain -> convert -> fine-tune -> predict.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from data_prep.synth import LABELS, generate_page
from layoutlmv3 import LayoutLMv3Config, LayoutLMv3ForTokenClassification
from layoutlmv3.processing import LayoutLMv3Processor
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer, train_bpe

BIO_LABELS = ["O"] + [f"{prefix}-{label.upper()}" for label in LABELS if label != "other" for prefix in "BI"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="where models and results go")
    parser.add_argument("--tokenizer", type=Path, help="a vocab.json + merges.txt directory (default: train one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic pages and the model")
    parser.add_argument(
        "--vocab-size", type=int, default=2000, help="size of the vocabulary trained when no --tokenizer"
    )
    return parser.parse_args(argv)


def page_inputs(page, tokenizer: LayoutLMv3Tokenizer) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Model inputs for one page through the page processor (pixel boxes -> 0..1000, the image at 224x224), the
    first window of the page, with BIO labels."""
    words, boxes, labels = [], [], []
    for entity in page.entities:
        for position, word in enumerate(entity.words):
            words.append(word.text)
            boxes.append(word.box)
            tag = "O" if entity.label == "other" else f"{'B' if position == 0 else 'I'}-{entity.label.upper()}"
            labels.append(BIO_LABELS.index(tag))
    processed = LayoutLMv3Processor(tokenizer)(page.image, words, boxes, labels)
    inputs = {name: value[:1] for name, value in processed.model_inputs().items()}
    inputs["labels"] = processed.labels[:1]
    return inputs, words


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    page = generate_page(args.seed, 0)
    page.image.save(args.out / "page.png")

    if args.tokenizer:
        tokenizer = LayoutLMv3Tokenizer.from_pretrained(args.tokenizer)
    else:
        corpus = [w.text for i in range(1, 30) for e in generate_page(args.seed, i).entities for w in e.words]
        tokenizer = train_bpe(corpus, vocab_size=args.vocab_size)
    tokenizer.save_pretrained(args.out / "tokenizer")

    config = LayoutLMv3Config.from_flavor(
        "tiny", vocab_size=tokenizer.vocab_size, num_labels=len(BIO_LABELS), id2label=dict(enumerate(BIO_LABELS))
    )
    model = LayoutLMv3ForTokenClassification(config).eval()
    inputs, words = page_inputs(page, tokenizer)
    started = time.perf_counter()
    with torch.no_grad():
        output = model(**inputs)
    elapsed = time.perf_counter() - started
    print(f"page {page.page_id}: {len(words)} words -> {inputs['input_ids'].shape[1]} tokens + 197 visual tokens")
    print(f"tiny model ({model.num_parameters() / 1e6:.1f}M parameters): forward in {elapsed * 1000:.0f} ms, "
          f"loss {output.loss.item():.3f} (untrained: about ln({len(BIO_LABELS)}) = {np.log(len(BIO_LABELS)):.3f})")  # fmt: skip

    model.save_pretrained(args.out / "model")
    model.save_pretrained(args.out / "model-hf", format="hf")
    import transformers

    ours = LayoutLMv3ForTokenClassification.from_pretrained(args.out / "model").eval()
    theirs = transformers.LayoutLMv3ForTokenClassification.from_pretrained(args.out / "model-hf").eval()
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    with torch.no_grad():
        reloaded = ours(**model_inputs).logits
        reference = theirs(**model_inputs).logits
    difference = (reloaded - reference).abs().max().item()
    print(f"saved {args.out / 'model'} and {args.out / 'model-hf'}; ours vs transformers max |diff| = {difference:.2e}")
    summary = {"words": len(words), "tokens": int(inputs["input_ids"].shape[1]), "max_abs_diff_vs_hf": difference}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if difference <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
