"""OCR quality against ground truth: word precision, recall and F1 of each Tesseract configuration, and its cost.

    python benchmarks/ocr_quality.py [--sets funsd,synthetic] [--synthetic 40] [--configs a,b] [--limit K] \\
        [--workers 1] [--json OUT.json] [--plot OUT.png]
    python benchmarks/ocr_quality.py --plot OUT.png --plot-from A.json B.json   # one chart from separate runs

Two page sets whose true words and boxes are known:

* ``funsd``: FUNSD's 199 scanned forms (training_data + testing_data, PNGs of about 100 dpi; word boxes in the PNG's
  pixels), read from the shared data (``$LAYOUTLMV3_SHARED_DATA/funsd``, else ``../shared/data/funsd`` beside the
  checkout; never copied into the repository). FUNSD annotates some words with empty or blank text: they are dropped
  from the truth (counted as ``blank_truth_words_dropped``), as fine-tuning drops them.
* ``synthetic``: N pages of ``data_prep.synth`` rendered as IIT-CDIP ships scans, 300 dpi 2550x3315 Group 4 TIFFs
  (``benchmarks.prep_throughput.g4_tiff_corpus``), the generator's exact words and boxes as truth.

Each configuration is an ``OcrSettings`` plus an engine, run through data prep's own ``TesseractOcr`` (so the
resampling, the engine choice and the mapping of boxes back to the page are the ones shards get). A resolution
bound that acts on no page of a set (``min_dpi`` on 300 dpi pages) changes nothing there, so a configuration that
only differs from one measured before it by such bounds is not run again on that set (``up300`` on the synthetic
pages is ``plain``; ``dpi150``, min_dpi = max_dpi = 150, is ``up150`` on FUNSD and ``down150`` on the synthetic
pages): the table names the configuration it equals.

Matching: a predicted word matches a true word when their normalised texts are equal and their boxes overlap with
IoU >= 0.5; each word matches at most once (pairs taken greedily, highest IoU first). Precision = matched /
predicted words, recall = matched / true words (micro-averaged over all words of the set), F1 their harmonic mean.
Text recall ignores position: the multiset of normalised true texts against the predicted ones.

Normalisation (``normalise``): Unicode NFKC (ligatures, full-width forms and the like are the same word), then
punctuation stripped from both ends (FUNSD's annotators and Tesseract split "Date:" / "(see" / "5." differently;
that is tokenisation, not a misread), unless the word is nothing but punctuation (":" must still match ":").
Case is kept: LayoutLMv3's tokenizer is cased, so "TOTAL" read as "Total" is a different input to the model.

Cost: CPU seconds of the OCR call per page (``time.process_time()`` of the worker plus the CPU time of the
``tesseract`` processes it waited for, from ``getrusage(RUSAGE_CHILDREN)``), so figures stay per core on a shared
machine; wall seconds too. Pages are split across ``--workers`` spawned processes that each run Tesseract on one
thread (OMP_THREAD_LIMIT=1 from their start, as data prep's workers); page decoding is not timed, resampling is.

Threat model: the pages and annotations are the shared FUNSD copy or pages this script generated; they are read
with data prep's own readers (pixel cap, bounded JSON), each OCR call is bounded by OCR_TIMEOUT_S, and a page
Tesseract rejects counts as read with no words (``failed_pages``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from data_prep.ocr import FunsdOcr, JsonOcr, TesseractOcr  # noqa: E402
from data_prep.ocr_settings import OcrSettings, page_dpi, scale_for  # noqa: E402
from data_prep.pages import read_page  # noqa: E402
from data_prep.rejects import PageRejected  # noqa: E402
from data_prep.tesseract_engine import ENGINE_ENV, persistent_engine_problem, worker_environment  # noqa: E402
from data_prep.words import Word  # noqa: E402

IOU_THRESHOLD = 0.5
OCR_TIMEOUT_S = 300.0
SYNTH_SEED = 28  # the synthetic pages are the same on every run
SETS = ("funsd", "synthetic")
FUNSD_SPLITS = ("training_data", "testing_data")


@dataclasses.dataclass(frozen=True)
class Config:
    """One measured configuration: Tesseract's settings and the engine that runs them."""

    name: str
    settings: OcrSettings
    engine: str = "auto"  # "auto": data prep's choice (in-process when tesserocr matches the command); "cli"

    def on_pages(self, scales: Sequence[float]) -> tuple[OcrSettings, str]:
        """What this configuration does on pages resampled by `scales`: its settings without the bounds that act on
        none of them, and its engine (two configurations equal here give the same words)."""
        settings = dataclasses.replace(
            self.settings,
            min_dpi=self.settings.min_dpi if any(scale > 1.0 for scale in scales) else 0,
            max_dpi=self.settings.max_dpi if any(scale < 1.0 for scale in scales) else 0,
        )
        return settings, self.engine


# Tesseract as it reads by default (psm 3, inverted-text retries, the page at its own resolution): data prep's
# behaviour before this measurement. Every configuration is this one with what its name says changed, whatever
# data prep's defaults (OcrSettings()) are now: they were chosen from this table (BENCHMARKS.md, "OCR quality").
PLAIN = OcrSettings(psm=3, invert=True, min_dpi=0, max_dpi=0)

CONFIGS = {
    config.name: config
    for config in (
        Config("plain", PLAIN),
        Config("cli", PLAIN, engine="cli"),
        Config("no-invert", dataclasses.replace(PLAIN, invert=False)),
        Config("psm4", dataclasses.replace(PLAIN, psm=4)),
        Config("psm6", dataclasses.replace(PLAIN, psm=6)),
        Config("psm11", dataclasses.replace(PLAIN, psm=11)),
        Config("up150", dataclasses.replace(PLAIN, min_dpi=150)),
        Config("up200", dataclasses.replace(PLAIN, min_dpi=200)),
        Config("up300", dataclasses.replace(PLAIN, min_dpi=300)),
        Config("down200", dataclasses.replace(PLAIN, max_dpi=200)),
        Config("down150", dataclasses.replace(PLAIN, max_dpi=150)),
        Config("down100", dataclasses.replace(PLAIN, max_dpi=100)),
        # one setting for both kinds of page: every page read at one resolution (min_dpi = max_dpi)
        Config("dpi150", dataclasses.replace(PLAIN, min_dpi=150, max_dpi=150)),
        Config("dpi200", dataclasses.replace(PLAIN, min_dpi=200, max_dpi=200)),
        Config("no-invert+dpi150", dataclasses.replace(PLAIN, invert=False, min_dpi=150, max_dpi=150)),
        Config("no-invert+dpi200", dataclasses.replace(PLAIN, invert=False, min_dpi=200, max_dpi=200)),
        Config("psm11+dpi150", dataclasses.replace(PLAIN, psm=11, min_dpi=150, max_dpi=150)),
        Config("psm11+dpi200", dataclasses.replace(PLAIN, psm=11, min_dpi=200, max_dpi=200)),
    )
}


# --- matching and metrics (no Tesseract needed; tests/test_ocr_quality.py) ---


def normalise(text: str) -> str:
    """The form two words are compared in (module docstring): NFKC, outer punctuation stripped, case kept."""
    text = unicodedata.normalize("NFKC", text).strip()
    start, end = 0, len(text)
    while start < end and unicodedata.category(text[start]).startswith("P"):
        start += 1
    while end > start and unicodedata.category(text[end - 1]).startswith("P"):
        end -= 1
    return text[start:end] or text


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes (coordinates in either order)."""
    ax0, ax1 = sorted((a[0], a[2]))
    ay0, ay1 = sorted((a[1], a[3]))
    bx0, bx1 = sorted((b[0], b[2]))
    by0, by1 = sorted((b[1], b[3]))
    width, height = min(ax1, bx1) - max(ax0, bx0), min(ay1, by1) - max(ay0, by0)
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union


def match_words(truth: Sequence[Word], predicted: Sequence[Word]) -> list[tuple[int, int]]:
    """One-to-one (true index, predicted index) pairs of equal normalised text and IoU >= IOU_THRESHOLD, taken
    greedily by IoU (highest first; ties by index, so the result is deterministic)."""
    by_text: dict[str, list[int]] = {}
    for index, word in enumerate(truth):
        by_text.setdefault(normalise(word.text), []).append(index)
    candidates = []
    for p, word in enumerate(predicted):
        for t in by_text.get(normalise(word.text), ()):
            overlap = iou(truth[t].box, word.box)
            if overlap >= IOU_THRESHOLD:
                candidates.append((-overlap, t, p))
    candidates.sort()
    used_true, used_predicted, pairs = set(), set(), []
    for _, t, p in candidates:
        if t not in used_true and p not in used_predicted:
            used_true.add(t)
            used_predicted.add(p)
            pairs.append((t, p))
    return pairs


@dataclasses.dataclass
class Score:
    """Word counts of one page or summed over pages."""

    true_words: int = 0
    predicted_words: int = 0
    matched: int = 0
    text_matched: int = 0  # true words whose normalised text the prediction holds, position ignored

    def __add__(self, other: Score) -> Score:
        return Score(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def metrics(self) -> dict[str, float]:
        precision = self.matched / self.predicted_words if self.predicted_words else 0.0
        recall = self.matched / self.true_words if self.true_words else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        text_recall = self.text_matched / self.true_words if self.true_words else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "text_recall": text_recall}


def score_page(truth: Sequence[Word], predicted: Sequence[Word]) -> Score:
    true_texts = Counter(normalise(word.text) for word in truth)
    predicted_texts = Counter(normalise(word.text) for word in predicted)
    return Score(
        true_words=len(truth),
        predicted_words=len(predicted),
        matched=len(match_words(truth, predicted)),
        text_matched=sum((true_texts & predicted_texts).values()),
    )


def true_words(words: Sequence[Word]) -> tuple[list[Word], int]:
    """The annotated words worth reading (blank ones dropped) and how many were dropped."""
    kept = [word for word in words if word.text.strip()]
    return kept, len(words) - len(kept)


# --- running OCR (in spawned one-thread workers) ---


def _cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # tesseract commands this process waited for
    return time.process_time() + children.ru_utime + children.ru_stime


def ocr_pages(task: tuple[Config, list[str]]) -> tuple[str, list[tuple[list[Word], float, float, bool]]]:
    """In a worker: the engine it ran on, then (words, CPU s, wall s, failed) for each page, in order."""
    config, paths = task
    os.environ[ENGINE_ENV] = config.engine  # read when the engine is chosen (TesseractOcr.prepare)
    ocr = TesseractOcr(OCR_TIMEOUT_S, config.settings)
    ocr.prepare()  # engine start-up is paid once per worker, as in data prep: not timed
    engine = "cli" if persistent_engine_problem() else "api"
    results = []
    for path in paths:
        image = read_page(Path(path))
        cpu, wall = _cpu_seconds(), time.perf_counter()
        try:
            words, failed = ocr.read(Path(path), 0, image), False
        except PageRejected:
            words, failed = [], True
        results.append((words, _cpu_seconds() - cpu, time.perf_counter() - wall, failed))
    return engine, results


@dataclasses.dataclass
class PageSet:
    name: str
    paths: list[str]
    truth: list[list[Word]]
    scales: dict[str, list[float]]  # config name -> each page's resampling factor
    info: dict[str, Any]


def funsd_root() -> Path:
    shared = Path(os.environ.get("LAYOUTLMV3_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    return shared / "funsd"


def load_set(name: str, paths: list[str], reader: Any, configs: Sequence[Config], info: dict[str, Any]) -> PageSet:
    truth, scales, dropped, dpis = [], {config.name: [] for config in configs}, 0, []
    for path in paths:
        image = read_page(Path(path))
        words, blank = true_words(reader.read(Path(path), 0, image))
        truth.append(words)
        dropped += blank
        for config in configs:
            scales[config.name].append(scale_for(image, config.settings))
        dpis.append(page_dpi(image))
    info = {**info, "pages": len(paths), "blank_truth_words_dropped": dropped}
    if dpis:
        info["dpi_range"] = [round(min(dpis)), round(max(dpis))]
    return PageSet(name, paths, truth, scales, info)


def funsd_set(root: Path, configs: Sequence[Config], limit: int | None) -> PageSet | None:
    if not all((root / split / "images").is_dir() for split in FUNSD_SPLITS):
        print(f"FUNSD not found at {root} (--funsd DIR or $LAYOUTLMV3_SHARED_DATA): skipping its pages", flush=True)
        return None
    paths = [str(path) for split in FUNSD_SPLITS for path in sorted((root / split / "images").glob("*.png"))]
    return load_set("funsd", paths[:limit], FunsdOcr(), configs, {"source": "FUNSD training_data + testing_data"})


def synthetic_set(work: Path, pages: int, configs: Sequence[Config], limit: int | None) -> PageSet:
    from benchmarks.prep_throughput import g4_tiff_corpus  # its imports are data prep's whole build: not in workers
    from data_prep.synth import write_corpus

    count = min(pages, limit) if limit else pages
    write_corpus(work / "synth", count, seed=SYNTH_SEED)
    tiffs = g4_tiff_corpus(work / "synth", work / "tiff")
    paths = [str(path) for path in sorted(tiffs.glob("*.tif"))]
    info = {"source": f"data_prep.synth seed {SYNTH_SEED} as 300 dpi 2550x3315 Group 4 TIFF"}
    return load_set("synthetic", paths, JsonOcr(), configs, info)


def measure(pool: Any, page_set: PageSet, config: Config, workers: int) -> dict[str, Any]:
    size = -(-len(page_set.paths) // workers)
    slices = [page_set.paths[i : i + size] for i in range(0, len(page_set.paths), size)]
    start = time.perf_counter()
    done = pool.map(ocr_pages, [(config, part) for part in slices])
    elapsed = time.perf_counter() - start
    engines = sorted({engine for engine, _ in done})
    pages = [page for _, part in done for page in part]
    score = Score()
    for truth, (words, _, _, _) in zip(page_set.truth, pages, strict=True):
        score = score + score_page(truth, words)
    count = len(pages)
    return {
        "config": config.name,
        "engine": ",".join(engines),
        "settings": config.settings.as_record(),
        "pages": count,
        **dataclasses.asdict(score),
        **{name: round(value, 4) for name, value in score.metrics().items()},
        "cpu_s_per_page": round(sum(page[1] for page in pages) / count, 3),
        "wall_s_per_page": round(sum(page[2] for page in pages) / count, 3),
        "failed_pages": sum(page[3] for page in pages),
        "elapsed_s": round(elapsed, 1),
    }


# --- report ---


def table(name: str, rows: list[dict[str, Any]], skipped: dict[str, str]) -> str:
    header = "| config | pages | words true / pred | P | R | F1 | text R | CPU s/page | wall s/page |"
    lines = [f"{name}:", header, "|" + "---|" * 9]
    for row in rows:
        lines.append(
            f"| {row['config']} | {row['pages']} | {row['true_words']} / {row['predicted_words']} "
            f"| {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['text_recall']:.3f} "
            f"| {row['cpu_s_per_page']:.2f} | {row['wall_s_per_page']:.2f} |"
        )
    if skipped:
        same = ", ".join(f"{config} = {equal}" for config, equal in skipped.items())
        lines.append(f"not run again (a resolution bound that acts on no page of this set): {same}")
    return "\n".join(lines)


def plot(sets: dict[str, dict[str, Any]], out: Path) -> None:
    """Precision, recall and F1 against CPU seconds per page, one panel per page set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name in SETS if name in sets]
    figure, axes = plt.subplots(1, len(names), figsize=(7 * len(names), 5.5), squeeze=False)
    for axis, name in zip(axes[0], names):
        rows = sets[name]["results"]
        seconds = [row["cpu_s_per_page"] for row in rows]
        for metric, marker in (("precision", "^"), ("recall", "v"), ("f1", "o")):
            axis.scatter(seconds, [row[metric] for row in rows], marker=marker, label=metric, alpha=0.8)
        for row in rows:
            axis.annotate(row["config"], (row["cpu_s_per_page"], row["f1"]), fontsize=7, xytext=(4, 2),
                          textcoords="offset points")  # fmt: skip
        info = sets[name]["info"]
        axis.set_title(f"{name}: {info['pages']} pages, dpi {info.get('dpi_range')}")
        axis.set_xlabel("CPU seconds per page (one thread)")
        axis.set_ylabel("word-level score (text equal, IoU >= 0.5)")
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def machine() -> dict[str, Any]:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line),
        platform.processor(),
    ) if Path("/proc/cpuinfo").exists() else platform.processor()  # fmt: skip
    try:
        tesseract = subprocess.run(["tesseract", "--version"], capture_output=True, text=True).stdout.split()[1]
    except (OSError, IndexError):
        tesseract = None
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(), "tesseract": tesseract}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(SETS), help="page sets to measure (default: %(default)s)")
    parser.add_argument("--funsd", type=Path, default=funsd_root(), help="FUNSD root (default: the shared copy)")
    parser.add_argument("--synthetic", type=int, default=40, help="synthetic 300 dpi pages (default: %(default)s)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"any of {', '.join(CONFIGS)} (default: all)")
    parser.add_argument("--limit", type=int, help="only the first K pages of each set (quick runs)")
    parser.add_argument("--workers", type=int, default=1, help="processes, one Tesseract thread each (default: 1)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, help="write the precision/recall/F1 vs seconds chart here (PNG)")
    parser.add_argument("--plot-from", type=Path, nargs="+", help="only draw --plot from these saved --json files")
    args = parser.parse_args(argv)
    unknown = [name for name in args.configs.split(",") if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; known: {', '.join(CONFIGS)}")
    if any(name not in SETS for name in args.sets.split(",")):
        parser.error(f"--sets takes any of {', '.join(SETS)}")
    if args.workers < 1 or args.synthetic < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--workers, --synthetic and --limit must be at least 1")
    if args.plot_from and not args.plot:
        parser.error("--plot-from needs --plot")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.plot_from:
        sets = {name: data for path in args.plot_from for name, data in json.loads(path.read_text())["sets"].items()}
        plot(sets, args.plot)
        return {"sets": sets}
    configs = [CONFIGS[name] for name in args.configs.split(",")]
    report: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/ocr_quality.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "workers": args.workers,
        "iou_threshold": IOU_THRESHOLD,
        "sets": {},
    }
    with tempfile.TemporaryDirectory() as tmp, worker_environment():  # workers: one OpenMP thread from the start
        context = multiprocessing.get_context("spawn")
        with context.Pool(args.workers) as pool:
            for name in args.sets.split(","):
                if name == "funsd":
                    page_set = funsd_set(args.funsd, configs, args.limit)
                else:
                    page_set = synthetic_set(Path(tmp), args.synthetic, configs, args.limit)
                if page_set is None or not page_set.paths:
                    continue
                rows, skipped, measured = [], {}, {}
                for config in configs:
                    here = config.on_pages(page_set.scales[config.name])
                    if here in measured:
                        skipped[config.name] = measured[here]
                        continue
                    measured[here] = config.name
                    row = measure(pool, page_set, config, args.workers)
                    rows.append(row)
                    print(
                        f"{name} {config.name}: {row['pages']} pages, P {row['precision']:.3f} R {row['recall']:.3f} "
                        f"F1 {row['f1']:.3f}, {row['cpu_s_per_page']:.2f} CPU s/page ({row['elapsed_s']} s)",
                        flush=True,
                    )
                report["sets"][name] = {"info": page_set.info, "results": rows, "skipped": skipped}
                print(table(name, rows, skipped), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.plot and report["sets"]:
        plot(report["sets"], args.plot)
    return report


if __name__ == "__main__":
    main()
