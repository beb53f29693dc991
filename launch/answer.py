"""Answer questions about a page with a fine-tuned question-answering model (launch/finetune.py with
task: questions): image (+ OCR words) + question -> the answer (a span of the page's words), a JSON line each.

Words come from NAME.json beside the image, --words, or Tesseract; the question and the page are windowed as in
training, and the best span over all windows is the answer (layoutlmv3.finetune.answerer).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from data_prep.page_words import words_of_page
from data_prep.pages import read_page
from data_prep.rejects import PageRejected
from layoutlmv3.finetune.answerer import Answerer
from layoutlmv3.page_layout import BadBox

EPILOG = """\
examples:
  python launch/answer.py --model outputs/finetune/docvqa/best --image page.png --question "What is the date?"
  python launch/answer.py --model outputs/finetune/tiny_qa/best --image form.png --words form.json \\
      --question "What is the Total?" --question "Who signed it?"

exit codes: 0 answered; 2 unusable input (a model not fine-tuned for questions, an unreadable page or words
file, an empty question; one line on stderr); 1 anything else.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--model", type=Path, required=True, help="fine-tuned question-answering model (OUTPUT/best)")
    parser.add_argument("--image", type=Path, required=True, help="the page image")
    parser.add_argument("--question", action="append", required=True, help="a question (repeat for several)")
    parser.add_argument("--words", type=Path, help="the page's words as JSON (default: NAME.json, else Tesseract)")
    parser.add_argument("--max-length", type=int, help="tokens per window (default: as fine-tuned, else 512)")
    parser.add_argument("--stride", type=int, help="tokens shared by consecutive windows (default: as fine-tuned)")
    return parser


def answer(args: argparse.Namespace) -> list[dict]:
    """Each question with its answer, read from the page by the fine-tuned model."""
    answerer = Answerer(args.model, args.max_length, args.stride)  # as the model was fine-tuned, unless told
    page = read_page(args.image)  # any page file; one over the pixel cap is refused unread
    words = words_of_page(args.image, page, args.words)  # --words, NAME.json beside it, else Tesseract
    answers = answerer.answer(page, words, args.question)
    return [{"question": question, "answer": text} for question, text in zip(args.question, answers, strict=True)]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        results = answer(args)
    except (OSError, ValueError, BadBox, PageRejected, Image.DecompressionBombError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for result in results:
        print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
