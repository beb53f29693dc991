"""Scanned pages + OCR -> tokenized webdataset shards + manifest: ``python -m data_prep.build_shards``.

Pipeline per page (in ``--workers`` processes): read (pages.py) -> OCR words (ocr.py) -> sample files
(samples.py); the main process writes the samples, in a fixed order, into shards (chunks.py, shard_writer.py)
and finally the manifest (manifest.py). Pages that cannot become samples are listed in rejects.jsonl.
"""

from __future__ import annotations

import argparse
import errno
import logging
import multiprocessing
import os
import resource
import shutil
import sys
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layoutlmv3.atomic_files import remove_temporaries_of, target_of_temporary
from layoutlmv3.data.sample_format import MANIFEST_FORMAT_VERSION
from layoutlmv3.page_sources import PAGE_SUFFIXES
from layoutlmv3.progress import progress
from layoutlmv3.tokenizer import CONFIG_FILE, MERGES_FILE, VOCAB_FILE, LayoutLMv3Tokenizer

from .chunk_lock import chunk_locks
from .chunks import (
    ChunkBuilder,
    ShardLimits,
    key_collisions,
    lock_path,
    plan_chunks,
    progress_path,
    task_chunks,
)
from .file_list import FileListError, check_listed_pages, read_file_list
from .manifest import MergeError, check_shards, make_manifest, output_names, write_outputs
from .ocr import OCR_KINDS, make_ocr, ocr_configuration
from .ocr_settings import PAGE_SEGMENTATION_MODES, OcrSettings
from .pages import scan_inputs
from .pdf import DEFAULT_PDF_DPI
from .process import WorkerSetup, WorkItem, init_worker, make_processor, process_in_worker
from .progress import ProgressMismatch
from .rejects import Reject
from .samples import Sample
from .shard_writer import ShardSizeMismatch
from .tesseract_engine import persistent_engine_problem, worker_environment

logger = logging.getLogger(__name__)

TOKENIZER_ENV = "LAYOUTLMV3_TOKENIZER"
DEFAULT_MAX_SAMPLES = 5000
DEFAULT_MAX_BYTES = 1_000_000_000
DEFAULT_OCR_TIMEOUT = 300.0
PERSISTENT_OCR_MIN_FILES = 8  # fewer files do not repay starting a worker process for in-process Tesseract
RESULTS_IN_FLIGHT_PER_WORKER = 4  # bounds memory when one slow page holds back the ordered results

EPILOG = """\
output (in --out):
  {prefix}-{chunk:06d}-{part:06d}.tar   webdataset shards; samples as in layoutlmv3/data/sample_format.py
  manifest.json, rejects.jsonl          one task (--num-tasks 1): the finished dataset
  manifest.taskIIII-of-NNNN.json,       an array task's share; `python -m data_prep.merge_manifests --out DIR`
  rejects.taskIIII-of-NNNN.jsonl          turns all of them into manifest.json + rejects.jsonl
  progress/{prefix}-{chunk:06d}.json   resume records (one per chunk)

sharding: input files (found by walking --input, or read from --file-list) are sorted, shuffled with --seed
and cut into chunks of --files-per-chunk files; task I of N takes the I-th contiguous run of chunks. Each
chunk becomes one or more shards (a new part whenever --max-samples-per-shard or --max-shard-bytes would be
exceeded) whose bytes depend only on the chunk's files and the settings, so N tasks + merge give the same
shards, in the same order, as one task.

resuming: rerun the same command. Shards are renamed into place when complete and recorded in progress/
right after; a rerun skips recorded shards and redoes only the unfinished part of each chunk. A rerun with
other settings (tokenizer, OCR configuration, shard limits, seed, ...) is refused, naming each one recorded
and requested.

rejects: unreadable files/pages, missing/invalid OCR, Tesseract errors and timeouts, pages without words and
absurd boxes are written to rejects.jsonl ({"source", "page", "reason", "detail"}) and counted by reason in
the manifest. Nothing is dropped silently.

examples:
  python -m data_prep.build_shards --input data/synth --out shards/synth --ocr funsd --tokenizer vocab/
  sbatch --array=0-63 --wrap "python -m data_prep.build_shards --input /data/iit-cdip --ocr tesseract \\
      --out /data/shards --tokenizer vocab/ --workers 16"   # task index/count from SLURM_ARRAY_TASK_*
  python -m data_prep.merge_manifests --out /data/shards
  python -m data_prep.file_list --input /data/iit-cdip --out /data/shards/file-list.txt   # one walk, then
  ... build_shards --input /data/iit-cdip --file-list /data/shards/file-list.txt ...      # in every task
  slurm/submit_prep.sh --array=0-63 -- --input ... --out ...   # does all three on Slurm (slurm/README.md)
"""


@dataclass(frozen=True)
class BuildConfig:
    """Everything one task of a build needs (the parsed command line)."""

    input: Path
    out: Path
    ocr: str
    tokenizer_dir: Path
    workers: int = 1
    task_index: int = 0
    num_tasks: int = 1
    prefix: str = "shard"
    max_samples_per_shard: int = DEFAULT_MAX_SAMPLES
    max_shard_bytes: int = DEFAULT_MAX_BYTES
    files_per_chunk: int = DEFAULT_MAX_SAMPLES
    seed: int = 0
    ocr_timeout: float = DEFAULT_OCR_TIMEOUT
    progress_bar: bool = True
    pdf_dpi: int = DEFAULT_PDF_DPI  # resolution PDF pages are rendered at
    ocr_settings: OcrSettings = OcrSettings()  # how Tesseract reads a page (--ocr tesseract only)
    file_list: Path | None = None  # the page files, listed once by data_prep.file_list (None: walk --input)


def build(config: BuildConfig) -> dict:
    """Build (or resume) this task's shards and write its manifest; returns the manifest."""
    tokenizer = LayoutLMv3Tokenizer.from_pretrained(config.tokenizer_dir)
    config.out.mkdir(parents=True, exist_ok=True)
    listed = read_file_list(config.file_list) if config.file_list is not None else None
    pages, skipped = (listed.pages, Counter()) if listed is not None else scan_inputs(config.input)
    sources = make_ocr(config.ocr, config.ocr_timeout, config.ocr_settings).inputs(pages)
    _report_skipped(config, skipped, len(pages) - len(sources))
    if not sources:
        where = f"in --file-list {config.file_list}" if listed is not None else f"under {config.input}"
        raise NoInput(
            f"no page files for --ocr {config.ocr} {where} (read: "
            f"{' '.join(sorted(PAGE_SUFFIXES))}{'; FUNSD pages sit in images/' if config.ocr == 'funsd' else ''})"
        )
    chunks = plan_chunks(sources, config.files_per_chunk, config.seed)
    ocr = ocr_configuration(config.ocr, config.ocr_settings)
    settings = _settings(config, tokenizer.fingerprint, ocr)
    limits = ShardLimits(config.max_samples_per_shard, config.max_shard_bytes)
    mine = task_chunks(chunks, config.task_index, config.num_tasks)
    if listed is not None:  # the listed files of this task only: N tasks still cost one look at each file
        check_listed_pages(config.input, listed, [source for chunk in mine for source in chunk.sources])
    outputs = output_names(config.task_index, config.num_tasks)
    with chunk_locks([lock_path(config.out, config.prefix, chunk.index) for chunk in mine]):
        if mine:  # what a killed run of these chunks left half-written (records, this task's manifest), now ours
            records = [progress_path(config.out, config.prefix, chunk.index) for chunk in mine]
            remove_temporaries_of(records + [config.out / name for name in outputs])
        builders = [ChunkBuilder(config.out, config.prefix, chunk, limits, settings) for chunk in mine]
        _write_pending(config, [builder for builder in builders if not builder.done], key_collisions(sources))
        shards = [shard for builder in builders for shard in builder.progress.shards]
        rejects = [reject for builder in builders for reject in builder.progress.rejects]
        check_shards(config.out, shards)  # the manifest never lists a shard that does not match its record
        listing = listed.record() if listed is not None else None
        manifest = make_manifest(tokenizer.fingerprint, config.seed, shards, rejects, ocr, listing)
        write_outputs(config.out, outputs, manifest, rejects)
    return manifest


class NoInput(RuntimeError):
    """The input directory holds nothing this build can read."""


def _report_skipped(config: BuildConfig, skipped: Counter[str], unselected: int) -> None:
    """Say which files under --input this build leaves aside (nothing is skipped silently)."""
    if skipped:
        kinds = ", ".join(f"{suffix}: {count}" for suffix, count in sorted(skipped.items()))
        logger.warning(
            "skipping %d file(s) under %s that are not page files (%s); pages are read from %s",
            sum(skipped.values()),
            config.input,
            kinds,
            " ".join(sorted(PAGE_SUFFIXES)),
        )
    if unselected:
        logger.warning(
            "skipping %d page file(s) that --ocr %s does not cover (FUNSD: only images/)", unselected, config.ocr
        )


def _settings(config: BuildConfig, tokenizer: str, ocr: dict[str, object]) -> dict[str, object]:
    """The settings that determine the bytes of a chunk (recorded in progress to refuse mixing builds). `ocr` is
    the OCR configuration (ocr_configuration): beyond the source's name, Tesseract's settings and release (other
    sources' chunks keep the digests they had before these were recorded)."""
    settings = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "ocr": config.ocr,
        "pdf_dpi": config.pdf_dpi,
        "tokenizer": tokenizer,
        "prefix": config.prefix,
        "max_samples_per_shard": config.max_samples_per_shard,
        "max_shard_bytes": config.max_shard_bytes,
        "files_per_chunk": config.files_per_chunk,
        "seed": config.seed,
    }
    if config.ocr == "tesseract":
        settings["tesseract"] = {name: value for name, value in ocr.items() if name != "source"}
    return settings


def _write_pending(config: BuildConfig, builders: Sequence[ChunkBuilder], collisions: dict[str, str]) -> None:
    """Process every file still to do, in order, feeding each chunk's outcomes to its builder."""
    todo = [(builder, builder.pending()) for builder in builders]
    items = [
        WorkItem(config.input, source, start, builder.chunk.index, index, collisions.get(source))
        for builder, files in todo
        for index, start in files
        for source in [builder.chunk.sources[index]]
    ]
    setup = WorkerSetup(config.ocr, config.ocr_timeout, config.tokenizer_dir, config.pdf_dpi, config.ocr_settings)
    with _results_in_order(setup, items, config.workers) as results, _progress_bar(config) as bar:
        done, rejects = 0, 0
        for builder, files in todo:
            try:
                for _ in files:
                    item, outcomes = next(results)
                    assert item.chunk == builder.chunk.index, "results arrived out of order"
                    builder.add_file(item.file_index, outcomes)
                    done += 1
                    rejects += sum(isinstance(outcome, Reject) for outcome in outcomes)
                    bar.set_postfix(files=f"{done}/{len(items)}", rejects=rejects, refresh=False)
                    bar.update(len(outcomes))
                builder.finish()
            finally:
                builder.discard_open_shard()


@contextmanager
def _results_in_order(
    setup: WorkerSetup, items: Sequence[WorkItem], workers: int
) -> Iterator[Iterator[tuple[WorkItem, list[Sample | Reject]]]]:
    """(item, outcomes) for every item, in item order, computed here (1 worker) or by a spawned process pool.

    Tesseract in-process (tesseract_engine.py) runs only in pool workers started with one OpenMP thread (the limit
    is read when the runtime loads, before any of our code runs there), so then even one worker is a pool.
    """
    persistent = setup.ocr == "tesseract" and len(items) >= PERSISTENT_OCR_MIN_FILES
    persistent = persistent and persistent_engine_problem() is None
    if ((workers <= 1 or len(items) <= 1) and not persistent) or not items:
        processor = make_processor(setup)
        yield ((item, processor.process(item)) for item in items)
        return
    context = multiprocessing.get_context("spawn")  # no fork: the parent may hold threads (tqdm, tokenizers)
    # An executor, not multiprocessing.Pool: a worker that dies (Tesseract crashing in-process) raises
    # BrokenProcessPool here instead of leaving its task's result to be waited for forever.
    with (
        worker_environment(),
        ProcessPoolExecutor(min(workers, len(items)), context, initializer=init_worker, initargs=(setup,)) as pool,
    ):
        yield _bounded_ordered_map(pool, items, RESULTS_IN_FLIGHT_PER_WORKER * workers)


def _bounded_ordered_map(
    pool: ProcessPoolExecutor, items: Sequence[WorkItem], window: int
) -> Iterator[tuple[WorkItem, list[Sample | Reject]]]:
    """Like ``pool.map`` (ordered), but with at most ``window`` items submitted and not yet consumed."""
    in_flight: deque = deque()
    for item in items:
        in_flight.append(pool.submit(process_in_worker, item))
        if len(in_flight) >= window:
            yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()


def _progress_bar(config: BuildConfig) -> Any:
    """Pages done and pages/s: a bar on a terminal, a line every 30 s in a log file (an array task's log)."""
    return progress(desc=f"task {config.task_index}/{config.num_tasks}", unit="page", disable=not config.progress_bar)


# ---------------------------------------------------------------------------------------------- command line


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def available_cpus() -> int:
    """CPUs this process may run on (a SLURM allocation, not the whole node), where the OS can tell."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def slurm_task() -> tuple[int, int]:
    """(task index, task count) of a SLURM array task (arrays MIN..MIN+N-1 with step 1), else (0, 1)."""
    if "SLURM_ARRAY_TASK_ID" not in os.environ:
        return 0, 1
    first = int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
    return int(os.environ["SLURM_ARRAY_TASK_ID"]) - first, int(os.environ["SLURM_ARRAY_TASK_COUNT"])


def build_parser() -> argparse.ArgumentParser:
    default_index, default_count = slurm_task()
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.build_shards",
        description="Turn scanned document pages and their OCR into tokenized webdataset shards and a manifest "
        "for LayoutLMv3 pretraining. Deterministic, resumable, and splittable across SLURM array tasks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", required=True, type=Path, metavar="DIR", help="root directory of the page images")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory (created if missing)")
    parser.add_argument(
        "--file-list",
        type=Path,
        metavar="LIST",
        help="read the page files from LIST (paths relative to --input, one a line, sorted; written once by "
        "`python -m data_prep.file_list --input DIR --out LIST`) instead of walking --input, so the tasks of an "
        "array share one walk; the chunks are those of the walk that wrote it, pages added since are not read, "
        "a bad line refuses the task naming it, and its sha256 is recorded in the manifest (default: walk --input)",
    )
    parser.add_argument(
        "--ocr",
        required=True,
        choices=OCR_KINDS,
        help="where words come from: 'tesseract' runs Tesseract on every page (*.tif/*.tiff/*.png/*.jpg/*.jpeg/*.pdf "
        "under --input; PDF pages with a text layer use it instead); 'json' reads NAME.json beside each image (format: see data_prep/ocr.py); 'funsd' reads "
        "FUNSD annotations (images/NAME.png + annotations/NAME.json); 'hocr' reads NAME.hocr (or .html) and "
        "'alto' NAME.xml (ALTO v2-v4) beside each image, as OCR engines write them (see data_prep/ocr_files.py)",
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        metavar="DIR",
        default=os.environ.get(TOKENIZER_ENV),
        help=f"directory with {VOCAB_FILE} + {MERGES_FILE} (e.g. the RoBERTa vocabulary); default: ${TOKENIZER_ENV}",
    )
    parser.add_argument(
        "--workers",
        type=_positive,
        default=available_cpus(),
        metavar="N",
        help="processes for reading, OCR and tokenization (default: the CPUs this process may use, %(default)s)",
    )
    parser.add_argument(
        "--task-index",
        type=_non_negative,
        default=default_index,
        metavar="I",
        help="this task's index in an array job (default: from SLURM_ARRAY_TASK_ID, else 0; now %(default)s)",
    )
    parser.add_argument(
        "--num-tasks",
        type=_positive,
        default=default_count,
        metavar="N",
        help="number of tasks in the array job (default: SLURM_ARRAY_TASK_COUNT, else 1; now %(default)s)",
    )
    parser.add_argument("--prefix", default="shard", help="shard name prefix (default: %(default)s)")
    parser.add_argument(
        "--max-samples-per-shard",
        type=_positive,
        default=DEFAULT_MAX_SAMPLES,
        metavar="K",
        help="a shard holds at most K samples (default: %(default)s)",
    )
    parser.add_argument(
        "--max-shard-bytes",
        type=_positive,
        default=DEFAULT_MAX_BYTES,
        metavar="B",
        help="a shard file is at most B bytes; a single sample larger than that is rejected (default: %(default)s)",
    )
    parser.add_argument(
        "--files-per-chunk",
        type=_positive,
        metavar="F",
        help="input files per chunk, the unit of task assignment and resumption (default: --max-samples-per-shard)",
    )
    parser.add_argument(
        "--seed",
        type=_non_negative,
        default=0,
        metavar="S",
        help="seed of the shuffle of the sorted input files before chunking; recorded in the manifest (default: 0)",
    )
    parser.add_argument(
        "--ocr-timeout",
        type=float,
        default=DEFAULT_OCR_TIMEOUT,
        metavar="SECONDS",
        help="Tesseract time limit per page; a page over it is rejected as ocr_timeout (default: %(default)s)",
    )
    parser.add_argument(
        "--pdf-dpi",
        type=_positive,
        default=DEFAULT_PDF_DPI,
        metavar="DPI",
        help="resolution PDF pages are rendered at (default: %(default)s); with --ocr tesseract, a PDF page's words "
        "come from its text layer when it has one (born-digital or already searchable), else from Tesseract",
    )
    _add_ocr_settings(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _add_ocr_settings(parser: argparse.ArgumentParser) -> None:
    """Tesseract's settings (ocr_settings.py), defaults from OcrSettings; None when not given, so a flag given with
    another --ocr is refused rather than ignored."""
    default = OcrSettings()
    group = parser.add_argument_group("Tesseract's settings (--ocr tesseract only; recorded in the manifest)")
    group.add_argument(
        "--ocr-psm",
        type=int,
        choices=PAGE_SEGMENTATION_MODES,
        metavar="MODE",
        help="Tesseract's page segmentation mode: 3 automatic, 4 one column, 6 one block of text, 11/12 sparse text "
        f"(default: {default.psm})",
    )
    group.add_argument(
        "--ocr-invert",
        action=argparse.BooleanOptionalAction,
        help="retry lines of low confidence as inverted (white on black) text; --no-ocr-invert saves time on pages "
        f"without any (default: {'on' if default.invert else 'off'})",
    )
    group.add_argument(
        "--ocr-min-dpi",
        type=_non_negative,
        metavar="DPI",
        help="upscale pages below DPI (recorded in the file, else estimated from a letter-size page) to it before "
        f"OCR; words keep boxes in the page's pixels; 0: never (default: {default.min_dpi})",
    )
    group.add_argument(
        "--ocr-max-dpi",
        type=_non_negative,
        metavar="DPI",
        help=f"downscale pages above DPI to it before OCR; 0: never (default: {default.max_dpi})",
    )


OCR_SETTING_FLAGS = {
    "psm": "--ocr-psm",
    "invert": "--ocr-invert",
    "min_dpi": "--ocr-min-dpi",
    "max_dpi": "--ocr-max-dpi",
}


def _ocr_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> OcrSettings:
    """The OcrSettings of the command line: the defaults overridden by the flags given (refused unless --ocr
    tesseract: the other sources read given words, the flags would do nothing)."""
    given = {name: value for name in OCR_SETTING_FLAGS if (value := getattr(args, f"ocr_{name}")) is not None}
    flags = " ".join(OCR_SETTING_FLAGS[name] for name in given)
    if given and args.ocr != "tesseract":
        parser.error(f"{flags}: Tesseract's settings apply to --ocr tesseract only, not --ocr {args.ocr}")
    try:
        return OcrSettings(**given)
    except ValueError as error:
        parser.error(f"{flags}: {error}")


def parse_config(argv: Sequence[str] | None = None) -> BuildConfig:
    """Parse and check the command line (clear errors for a missing tokenizer, tesseract or input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tokenizer is None:
        parser.error(f"no tokenizer: pass --tokenizer DIR or set {TOKENIZER_ENV} (a directory with {VOCAB_FILE})")
    if not (args.tokenizer / VOCAB_FILE).is_file() or not (args.tokenizer / MERGES_FILE).is_file():
        parser.error(f"--tokenizer {args.tokenizer} lacks {VOCAB_FILE} or {MERGES_FILE} ({CONFIG_FILE} optional)")
    if not args.input.is_dir():
        parser.error(f"--input {args.input} is not a directory")
    if args.task_index >= args.num_tasks:
        parser.error(f"--task-index {args.task_index} must be below --num-tasks {args.num_tasks}")
    if args.ocr == "tesseract" and shutil.which("tesseract") is None:
        parser.error("--ocr tesseract needs the tesseract binary on PATH (e.g. apt-get install tesseract-ocr)")
    return BuildConfig(
        input=args.input,
        out=args.out,
        ocr=args.ocr,
        tokenizer_dir=args.tokenizer,
        workers=args.workers,
        task_index=args.task_index,
        num_tasks=args.num_tasks,
        prefix=args.prefix,
        max_samples_per_shard=args.max_samples_per_shard,
        max_shard_bytes=args.max_shard_bytes,
        files_per_chunk=args.files_per_chunk or args.max_samples_per_shard,
        seed=args.seed,
        ocr_timeout=args.ocr_timeout,
        progress_bar=not args.quiet,
        pdf_dpi=args.pdf_dpi,
        ocr_settings=_ocr_settings(parser, args),
        file_list=args.file_list,
    )


_STORAGE_HINTS = {
    errno.ENOSPC: "the disk is full: free space, then rerun (finished shards are kept, the rest resumes)",
    errno.EDQUOT: "the disk quota is exceeded: free space or raise the quota, then rerun (finished shards are kept)",
    errno.EROFS: "the filesystem is read-only: give --out a writable directory",
    errno.EACCES: "permission denied: give --out a directory this user can write",
    errno.EPERM: "operation not permitted: give --out a directory this user can write",
}


def storage_error(error: OSError, out: Path) -> str:
    """One line for an OSError of the build: the path (the error's own, else --out; a temporary by the file it
    was to become), what failed and what to do. Nothing partial is published: shards and manifests appear by
    rename once whole. Running out of file handles is named as such wherever it happens (it is no fault of the
    storage)."""
    path = Path(error.filename) if isinstance(error.filename, str | os.PathLike) else out
    path = target_of_temporary(path) or path
    reason = error.strerror or str(error)
    if error.errno in (errno.EMFILE, errno.ENFILE):
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return (
            f"cannot open a file at {path}: {reason}; raise the open-file limit (ulimit -n, now {limit}) or lower "
            "--workers, then rerun (finished shards are kept)"
        )
    try:
        inside = path.resolve().is_relative_to(out.resolve())
    except (OSError, RuntimeError):  # a link loop on the way: the path is still the one to name
        inside = False
    if not inside:
        return f"cannot read {path}: {reason}; check it, then rerun (finished shards are kept)"
    hint = _STORAGE_HINTS.get(error.errno, "check the storage, then rerun (finished shards are kept)")
    return f"cannot write {path}: {reason}; {hint}"


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        manifest = build(config)
    except (ProgressMismatch, MergeError, ShardSizeMismatch, NoInput, FileListError) as error:
        sys.exit(f"error: {error}")
    except BrokenProcessPool as error:
        sys.exit(
            f"error: a worker process died ({error}); finished shards are kept, rerun to resume. If Tesseract "
            f"crashed in-process, LAYOUTLMV3_OCR_ENGINE=cli runs it as a command, which rejects such a page instead"
        )
    except OSError as error:  # pages are read as data (a bad one is a reject): this is the storage failing
        sys.exit(f"error: {storage_error(error, config.out)}")
    rejects = sum(manifest["rejects"].values())
    names = output_names(config.task_index, config.num_tasks)
    listed = manifest.get("file_list")
    print(
        f"task {config.task_index}/{config.num_tasks}: {manifest['total_samples']} samples in "
        f"{len(manifest['shards'])} shards, {rejects} rejected {manifest['rejects']} -> {config.out / names[0]}"
        + (f" (pages from --file-list {config.file_list}, sha256 {listed['sha256']})" if listed else "")
    )
    if manifest["total_samples"] == 0 and rejects:
        sys.exit(f"error: every page of this task was rejected ({manifest['rejects']}): see {config.out / names[1]}")


if __name__ == "__main__":
    main()
