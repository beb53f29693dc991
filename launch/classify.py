"""Classify pages with a fine-tuned document classifier (launch/finetune.py with task: classes): image (+ OCR
words) -> the class and every class's probability, as JSON.

A page is any of layoutlmv3.page_sources.PAGE_SUFFIXES (a PDF's first page); with --image DIR, files there of
another type are listed as skipped. Words come from Tesseract unless --words gives them (JSON: {"words": [{"text", "box": [x0, y0, x1, y1], "line"}]},
pixel boxes); the page is read as in training (layoutlmv3.finetune.classifier).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from data_prep.page_words import words_of_page
from data_prep.pages import read_page, scan_folder
from data_prep.rejects import PageRejected
from layoutlmv3.atomic_files import write_text
from layoutlmv3.finetune.classifier import Classifier
from layoutlmv3.page_layout import BadBox
from layoutlmv3.page_sources import PAGE_SUFFIXES
from layoutlmv3.progress import progress

EPILOG = """\
examples:
  python launch/classify.py --model outputs/finetune/rvl_cdip/best --image page.png
  python launch/classify.py --model outputs/finetune/tiny_classes/best --image scans/ --out classes.jsonl

exit codes: 0 classified; 1 some pages of --image DIR could not be read (each named on stderr, the others
classified) or anything else; 2 unusable input (a model not fine-tuned for document classes, no pages, the one
page or its words file unreadable, an --out that cannot be written; one line on stderr).
"""


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
    lines, skipped = [], 0
    try:
        classifier = Classifier(args.model, args.max_length)  # as the model was fine-tuned, unless told otherwise
        # A bar for a folder (long work); none for one page.
        for path in progress(images, desc="classify", unit="page", disable=not args.image.is_dir()):
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
            write_text(args.out, text)
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
