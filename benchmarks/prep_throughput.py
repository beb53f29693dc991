"""Data preparation throughput: pages/s per core of ``data_prep.build_shards``, OCR given vs. Tesseract.

    python benchmarks/prep_throughput.py [--pages 48] [--workers 1 2 ...] [--tokenizer DIR] [--skip-tesseract]

Times whole builds (read, OCR, resize + PNG encode, tokenization, shard writing) on two inputs made from the
synthetic corpus (``data_prep.synth``; generation is not timed):

* ``synth-png``: its 1000x1300 grayscale PNGs, OCR given as FUNSD annotations (``--ocr funsd``) or Tesseract;
* ``g4-tiff``: the same pages as IIT-CDIP ships scans -- 2550x3315 bilevel CCITT Group 4 TIFFs at 300 dpi --
  OCR given as ``NAME.json`` (``--ocr json``, boxes scaled) or Tesseract.

With one worker everything runs in this process, so pages/s is the per-core rate. More workers add a one-off
start-up per worker (spawn, imports, tokenizer loading: about 1-2 s) that short runs do not amortise. Prints a
table and a JSON line. Without --tokenizer (or $LAYOUTLMV3_TOKENIZER) a BPE vocabulary is trained on the
synthetic words; tokenization is a small part of the cost either way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TIFF_SIZE = (2550, 3315)  # 8.5 x 11.05 in at 300 dpi, the page aspect of the synthetic corpus
sys.path.insert(0, str(REPO_ROOT))

from PIL import Image  # noqa: E402

from data_prep.build_shards import TOKENIZER_ENV, BuildConfig, available_cpus, build  # noqa: E402
from data_prep.synth import write_corpus  # noqa: E402
from layoutlmv3.tokenizer import train_bpe  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=48, help="synthetic pages per build (default: %(default)s)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="worker counts to time (default: 1)")
    parser.add_argument("--tokenizer", type=Path, default=os.environ.get(TOKENIZER_ENV), help="vocabulary dir")
    parser.add_argument("--skip-tesseract", action="store_true", help="time only the OCR-given path")
    return parser.parse_args()


def trained_tokenizer(corpus: Path, out: Path) -> Path:
    words = [
        word["text"]
        for path in sorted((corpus / "annotations").glob("*.json"))
        for entity in json.loads(path.read_text())["form"]
        for word in entity["words"]
    ]
    train_bpe(words, vocab_size=2000).save_pretrained(out)
    return out


def g4_tiff_corpus(synth: Path, out: Path) -> Path:
    """The synthetic pages rescaled to 300 dpi Letter size, binarised and saved as Group 4 TIFF + json OCR."""
    out.mkdir()
    for annotation in sorted((synth / "annotations").glob("*.json")):
        with Image.open(synth / "images" / f"{annotation.stem}.png") as page:
            scale = TIFF_SIZE[0] / page.width
            big = page.convert("L").resize(TIFF_SIZE, Image.Resampling.BILINEAR)
        big.point(lambda value: 255 if value > 160 else 0).convert("1").save(
            out / f"{annotation.stem}.tif", compression="group4", dpi=(300, 300)
        )
        words = [
            {"text": word["text"], "box": [round(v * scale) for v in word["box"]], "line": entity["id"]}
            for entity in json.loads(annotation.read_text())["form"]
            for word in entity["words"]
        ]
        (out / f"{annotation.stem}.json").write_text(json.dumps({"pages": [{"page": 0, "words": words}]}))
    return out


def time_build(corpus: Path, out: Path, tokenizer: Path, ocr: str, workers: int) -> dict[str, object]:
    """One full build into a fresh directory; pages/s counts every input page (samples and rejects)."""
    config = BuildConfig(input=corpus, out=out, ocr=ocr, tokenizer_dir=tokenizer, workers=workers, progress_bar=False)
    start = time.perf_counter()
    manifest = build(config)
    seconds = time.perf_counter() - start
    pages = manifest["total_samples"] + sum(manifest["rejects"].values())
    return {
        "input": corpus.name,
        "ocr": ocr,
        "workers": workers,
        "pages": pages,
        "samples": manifest["total_samples"],
        "seconds": round(seconds, 2),
        "pages_per_s": round(pages / seconds, 2),
        "pages_per_s_per_core": round(pages / seconds / workers, 2),
        "kb_per_sample": round(
            sum(s["bytes"] for s in manifest["shards"]) / max(manifest["total_samples"], 1) / 1e3, 1
        ),
    }


def main() -> None:
    args = parse_args()
    tesseract = not args.skip_tesseract and shutil.which("tesseract") is not None
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_corpus(root / "synth-png", args.pages, seed=0, workers=max(args.workers))
        tiffs = g4_tiff_corpus(root / "synth-png", root / "g4-tiff")
        tokenizer = args.tokenizer or trained_tokenizer(root / "synth-png", root / "vocab")
        runs = [(root / "synth-png", "funsd"), (tiffs, "json")]
        runs += [(root / "synth-png", "tesseract"), (tiffs, "tesseract")] if tesseract else []
        rows = [
            time_build(corpus, root / f"out-{corpus.name}-{ocr}-{workers}", tokenizer, ocr, workers)
            for corpus, ocr in runs
            for workers in args.workers
        ]
    header = f"{'input':<10} {'ocr':<10} {'workers':>7} {'pages':>6} {'seconds':>8} {'pages/s':>8} {'pages/s/core':>12}"
    print(header + f" {'KB/sample':>9}")
    for row in rows:
        print(
            f"{row['input']:<10} {row['ocr']:<10} {row['workers']:>7} {row['pages']:>6} {row['seconds']:>8} "
            f"{row['pages_per_s']:>8} {row['pages_per_s_per_core']:>12} {row['kb_per_sample']:>9}"
        )
    machine = {"cpu": _cpu_model(), "cores": available_cpus()}
    print(json.dumps({"benchmark": "prep_throughput", "machine": machine, "results": rows}))


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
