"""OCR engines side by side, on the same pages in one run: the Tesseract command line (one process per page)
against the engine kept in the process through tesserocr (data_prep/tesseract_engine.py, what `--ocr tesseract`
uses when tesserocr is built against the same Tesseract). Reports seconds per page for each and whether the two
give identical words and boxes -- the condition for using the faster one in data preparation.

    OMP_THREAD_LIMIT=1 python benchmarks/ocr_engines.py --pages 12 --json benchmarks/results/ocr_engines.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.prep_throughput import g4_tiff_corpus  # noqa: E402
from data_prep.ocr import parse_tsv, run_tesseract  # noqa: E402
from data_prep.pages import read_pages  # noqa: E402
from data_prep.synth import write_corpus  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=12, help="synthetic pages, as 300 dpi Group 4 TIFF")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    if os.environ.get("OMP_THREAD_LIMIT") != "1":  # read once, when OpenMP loads: it must come from the shell
        sys.exit("run with OMP_THREAD_LIMIT=1 in the environment, as data prep's OCR workers are started")
    import tesserocr

    from data_prep.tesseract_engine import PersistentTesseract

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_corpus(root / "synth", args.pages, seed=21)
        corpus = g4_tiff_corpus(root / "synth", root / "tiff")
        pages = [image for path in sorted(corpus.glob("*.tif")) for _, image in read_pages(path)]
        cli_seconds, api_seconds, same, differing_words = [], [], 0, 0
        engine = PersistentTesseract()
        for page in pages:
            start = time.perf_counter()
            cli = parse_tsv(run_tesseract(page, timeout=300))
            cli_seconds.append(time.perf_counter() - start)
            start = time.perf_counter()
            persistent = parse_tsv(engine.tsv(page, timeout=300))
            api_seconds.append(time.perf_counter() - start)
            same += cli == persistent
            differing_words += len(set(cli) ^ set(persistent))
        result = {
            "pages": len(pages),
            "page_size": list(pages[0].size),
            "cli_tesseract": _version_of_cli(),
            "tesserocr_tesseract": tesserocr.tesseract_version().split()[1],
            "cli_s_per_page": round(statistics.mean(cli_seconds), 3),
            "tesserocr_s_per_page": round(statistics.mean(api_seconds), 3),
            "speedup": round(statistics.mean(cli_seconds) / statistics.mean(api_seconds), 2),
            "pages_with_identical_words_and_boxes": same,
            "words_differing": differing_words,
        }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


def _version_of_cli() -> str:
    import subprocess

    return subprocess.run(["tesseract", "--version"], capture_output=True, text=True).stdout.split()[1]


if __name__ == "__main__":
    Image.MAX_IMAGE_PIXELS = None
    main()
