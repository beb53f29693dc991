"""Label the words of form pages with a fine-tuned LayoutLMv3 model (HEADER / QUESTION / ANSWER entities).

A page (PNG, JPEG, TIFF, GIF, BMP, WebP, PDF: layoutlmv3.page_sources.PAGE_SUFFIXES) is read with Tesseract unless --words gives its words; the result is JSON with
every word's label and confidence and the grouped entities (label, text, pixel box, confidence), and with
--viz a PNG with one coloured box per entity. --image DIR processes every image under DIR (every page of a
multi-page TIFF) into --out DIR: NAME.json for a file's first page, NAME.pN.json for page N > 0; files there
of another type are listed as skipped. A page over the pixel cap is refused unread.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from data_prep.ocr import Word
from data_prep.page_words import ocr_words
from data_prep.pages import read_page, read_pages, scan_folder
from data_prep.rejects import PageRejected
from layoutlmv3.atomic_files import file_in_place, write_text
from layoutlmv3.finetune.predict import PagePrediction, Predictor, draw
from layoutlmv3.page_layout import BadBox, read_words
from layoutlmv3.progress import progress

EPILOG = """\
examples:
  python launch/predict.py --model outputs/finetune/funsd/best --image form.png --out form.json --viz form_viz.png
  python launch/predict.py --model outputs/finetune/funsd/best --image form.png --words words.json --out form.json
  python launch/predict.py --model outputs/finetune/funsd/best --image scans/ --out results/ --viz results/
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--model", type=Path, required=True, help="fine-tuned model directory (launch/finetune.py)")
    parser.add_argument("--image", type=Path, required=True, help="a page image, or a directory of them")
    parser.add_argument("--out", type=Path, required=True, help="result JSON (a directory with --image DIR)")
    parser.add_argument("--words", type=Path, help='words JSON {"words": [{"text", "box", "line"?}]} (single image)')
    parser.add_argument("--viz", type=Path, help="PNG with entity boxes (a directory with --image DIR)")
    parser.add_argument(
        "--page", type=_page_number, default=0, help="page of a multi-page file, from 0 (single image; default 0)"
    )
    parser.add_argument(
        "--boxes", choices=("segment", "word"), help="layout positions (default: as fine-tuned, else segment)"
    )
    parser.add_argument("--max-length", type=int, help="tokens per window (default: as fine-tuned, else 512)")
    parser.add_argument(
        "--stride", type=int, help="tokens shared by consecutive windows (default: as fine-tuned, else 128)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return parser


def _page_number(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"a page number counts from 0, got {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        files = check_paths(args)  # every mistake in the paths is found before the model is loaded
        check_device(args.device)
        predictor = Predictor(args.model, args.device, args.max_length, args.stride, args.boxes)
        if files is not None:
            return _batch(predictor, args.image, files, args.out, args.viz)
        words = read_words(args.words) if args.words else None
        _page(predictor, args.image, args.page, words, args.out, args.viz)
    except (ValueError, OSError, PageRejected) as error:  # BadBox is a ValueError; OSError: a full disk, say
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


def check_paths(args: argparse.Namespace) -> list[str] | None:
    """The pages under --image DIR (None for one file), refused when nothing can be done right: no pages, two
    files whose results would share a name, an --out/--viz of the wrong kind, an output that is an input."""
    outputs = [path for path in (args.out, args.viz) if path is not None]
    if not args.image.is_dir():
        inputs = [args.image.resolve(), *([args.words.resolve()] if args.words else [])]
        if clash := next((path for path in outputs if path.resolve() in inputs), None):
            raise ValueError(f"{clash} is an input: the result would overwrite it")
        if folder := next((path for path in outputs if path.is_dir()), None):
            raise ValueError(f"{folder} is a folder: with one --image FILE, --out and --viz name files")
        return None
    if args.words:
        raise ValueError("--words goes with a single --image FILE")
    if file := next((path for path in outputs if path.exists() and not path.is_dir()), None):
        raise ValueError(f"{file} is a file: with --image DIR, --out and --viz name folders")
    scan = scan_folder(args.image)
    if note := scan.skipped_note():
        print(f"{args.image}: {note}", file=sys.stderr)
    files = scan.pages
    if not files:
        raise ValueError(f"no page images under {args.image}")
    by_result: dict[str, str] = {}
    for relative in files:
        if (other := by_result.setdefault(str(Path(relative).with_suffix("")), relative)) != relative:
            raise ValueError(f"{other} and {relative} would write the same result file: rename one")
    return files


def check_device(device: str) -> None:
    """A device that cannot run here is named now, not as a torch traceback."""
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise ValueError(f"--device {device}: {error}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device here (torch {torch.__version__})")


def _page(predictor: Predictor, path: Path, page: int, words: list[Word] | None, out: Path, viz: Path | None) -> None:
    image = read_page(path, page)  # a page that cannot be read, or is over the pixel cap: ValueError naming it
    prediction = predictor.predict(image, ocr_words(image) if words is None else words, name=str(path), page=page)
    _write(prediction, image, out, viz)


def _batch(predictor: Predictor, root: Path, files: list[str], out: Path, viz: Path | None) -> int:
    """Every page of `files` under `root`; a page that fails is reported and skipped (exit 1 if any)."""
    failed = 0
    for relative in progress(files, desc="predict", unit="file"):
        stem = Path(relative).with_suffix("")
        for number, image in read_pages(root / relative):
            name = f"{stem}.json" if number == 0 else f"{stem}.p{number}.json"
            try:
                if isinstance(image, PageRejected):
                    raise image
                prediction = predictor.predict(image, ocr_words(image), name=relative, page=number)
            except (PageRejected, BadBox) as error:
                tqdm.write(f"skipped {relative} page {number}: {error}", file=sys.stderr)  # above the bar, not into it
                failed += 1
                continue
            _write(prediction, image, out / name, None if viz is None else (viz / name).with_suffix(".png"))
    print(f"wrote {out}" + (f" ({failed} page(s) skipped)" if failed else ""))
    return 1 if failed else 0


def _write(prediction: PagePrediction, image: Image.Image, out: Path, viz: Path | None) -> None:
    """The result (and its picture) written whole or not at all: a full disk leaves no half JSON to be read."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, prediction.to_json())
    if viz:
        viz.parent.mkdir(parents=True, exist_ok=True)
        with file_in_place(viz) as temporary:
            draw(image, prediction).save(temporary, format=Image.registered_extensions().get(viz.suffix.lower(), "PNG"))


if __name__ == "__main__":
    sys.exit(main())
