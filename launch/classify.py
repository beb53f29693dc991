"""Classify pages with a fine-tuned document classifier (launch/finetune.py with task: classes): image (+ OCR
words) -> the class and every class's probability, as JSON.

A page is any of layoutlmv3.page_sources.PAGE_SUFFIXES (a PDF's first page); with --image DIR, files there of
another type are listed as skipped. Words come from Tesseract unless --words gives them (JSON: {"words": [{"text", "box": [x0, y0, x1, y1], "line"}]},
pixel boxes); the layout positions and the image are prepared as in training (the page's first window).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from data_prep.page_words import words_of_page
from data_prep.pages import read_page, scan_folder
from data_prep.rejects import PageRejected
from data_prep.shard_writer import write_file_atomically
from layoutlmv3.finetune.dataset import model_inputs
from layoutlmv3.finetune.task_base import saved_processing
from layoutlmv3.model import LayoutLMv3ForSequenceClassification
from layoutlmv3.page_layout import BadBox, Word, model_words, to_sample_mode
from layoutlmv3.page_sources import PAGE_SUFFIXES
from layoutlmv3.processing import LayoutLMv3Processor, page_pixels
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer

EPILOG = """\
examples:
  python launch/classify.py --model outputs/finetune/rvl_cdip/best --image page.png
  python launch/classify.py --model outputs/finetune/tiny_classes/best --image scans/ --out classes.jsonl

exit codes: 0 classified; 1 some pages of --image DIR could not be read (each named on stderr, the others
classified) or anything else; 2 unusable input (a model not fine-tuned for document classes, no pages, the one
page or its words file unreadable, an --out that cannot be written; one line on stderr).
"""


class Classifier:
    """A fine-tuned document classifier with its tokenizer and class names."""

    def __init__(self, model_dir: str | Path, max_length: int = 512, boxes: str = "segment") -> None:
        self.model = LayoutLMv3ForSequenceClassification.from_pretrained(model_dir, trained_head=True).eval()
        config = self.model.config
        if len(config.id2label) != config.num_labels:
            raise ValueError(f"{model_dir} names no classes (id2label): not a fine-tuned document classifier")
        self.classes = [config.id2label[index] for index in range(config.num_labels)]
        tokenizer = LayoutLMv3Tokenizer.from_pretrained(model_dir)
        self.processor = LayoutLMv3Processor(tokenizer, max_length=max_length, stride=0)  # the first window decides
        self.boxes = boxes

    @torch.no_grad()
    def classify(self, image: Image.Image, words: Sequence[Word]) -> dict:
        image = to_sample_mode(image)
        texts, boxes = model_words(words, *image.size, self.boxes)
        window = self.processor.encode(texts, boxes)[0]
        inputs = {name: torch.tensor([getattr(window, name)]) for name in ("input_ids", "bbox", "attention_mask")}
        inputs["pixel_values"] = page_pixels(image, self.model.config.input_size)[None]
        logits = self.model(**model_inputs(inputs, self.model.config, "cpu", torch.float32)).logits
        probabilities = logits.softmax(-1)[0]
        ranked = sorted(zip(self.classes, probabilities.tolist(), strict=True), key=lambda pair: -pair[1])
        return {"class": ranked[0][0], "probabilities": {name: round(value, 4) for name, value in ranked}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--model", type=Path, required=True, help="fine-tuned classifier directory (OUTPUT/best)")
    parser.add_argument("--image", type=Path, required=True, help="a page image, or a folder of them")
    parser.add_argument(
        "--words", type=Path, help="the page's words as JSON (default: NAME.json beside the image, else Tesseract)"
    )
    parser.add_argument("--out", type=Path, help="write JSON lines here (default: stdout)")
    parser.add_argument("--max-length", type=int, help="tokens read from the page (default: as fine-tuned, else 512)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.words and args.image.is_dir():
        print("error: --words gives one page's words; with --image DIR each page's NAME.json is read", file=sys.stderr)
        return 2
    if args.out and not args.out.parent.is_dir():  # found now, not after every page is classified
        print(f"error: --out {args.out}: no folder {args.out.parent}", file=sys.stderr)
        return 2
    images = page_images(args.image)
    if not images:
        print(f"error: no page images ({' '.join(sorted(PAGE_SUFFIXES))}) under {args.image}", file=sys.stderr)
        return 2
    saved = saved_processing(args.model)  # as the model was fine-tuned, unless told otherwise
    lines, skipped = [], 0
    try:
        classifier = Classifier(
            args.model, args.max_length or saved.get("max_length", 512), saved.get("boxes", "segment")
        )
        # A bar for a folder (long work); none for one page.
        for path in tqdm(images, desc="classify", unit="page", disable=not args.image.is_dir()):
            try:
                lines.append(json.dumps({"image": str(path), **classify_page(classifier, path, args.words)}))
            except PAGE_ERRORS as error:
                if not args.image.is_dir():
                    raise
                tqdm.write(f"skipped {error}", file=sys.stderr)  # the folder's other pages are still classified
                skipped += 1
    except PAGE_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = "".join(line + "\n" for line in lines)
    if args.out:
        try:
            write_file_atomically(args.out, text.encode("utf-8"))
        except OSError as error:
            print(f"error: --out {args.out}: {error}", file=sys.stderr)
            return 2
    else:
        sys.stdout.write(text)
    if skipped:
        print(f"{skipped} of {len(images)} pages skipped (named above)", file=sys.stderr)
    return 1 if skipped else 0


PAGE_ERRORS = (OSError, ValueError, BadBox, PageRejected, Image.DecompressionBombError)


def page_images(image: Path) -> list[Path]:
    """The page, or every page file under a folder (sorted); files of other types there are listed on stderr."""
    if not image.is_dir():
        return [image]
    scan = scan_folder(image)
    if note := scan.skipped_note():
        print(f"{image}: {note}", file=sys.stderr)
    return [image / relative for relative in scan.pages]


def classify_page(classifier: Classifier, path: Path, words_path: Path | None) -> dict:
    """One page's class; a page that cannot be read is an error naming it (one bad scan in a folder is found)."""
    try:
        image = read_page(path)  # the same reader, suffixes and pixel cap as predict.py and data prep
        words = words_of_page(path, image, words_path)  # --words, NAME.json beside it, else Tesseract
        return classifier.classify(image, words)
    except PAGE_ERRORS as error:
        if str(path) in str(error):
            raise
        raise ValueError(f"{path}: {error}") from error


if __name__ == "__main__":
    sys.exit(main())
