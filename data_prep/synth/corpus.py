"""Write a whole synthetic corpus to disk, in parallel, skipping pages a previous run already finished."""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from pathlib import Path

from layoutlmv3.atomic_files import remove_temporaries_of
from layoutlmv3.progress import progress as progress_bar

from .funsd_format import is_complete, page_paths, write_page
from .generate import generate_page, page_id


@dataclass(frozen=True)
class CorpusResult:
    """How many pages this call generated and how many were already complete on disk."""

    written: int
    skipped: int


def _write_one(task: tuple[str, int, int]) -> None:
    out_dir, seed, index = task
    write_page(generate_page(seed, index), Path(out_dir))


def write_corpus(
    out_dir: str | Path, pages: int, seed: int = 0, workers: int = 1, progress: bool = False
) -> CorpusResult:
    """Generate pages ``0..pages-1`` of corpus ``seed`` into ``out_dir`` (FUNSD layout).

    Workers are spawned rather than forked so a caller that already started threads or CUDA is safe;
    output is identical for any ``workers`` because each page is seeded from (seed, index) alone. One writer per
    directory (the launchers hold a lock): a rerun first deletes what a killed run left half-written.
    """
    out = Path(out_dir)
    tasks = [(str(out), seed, i) for i in range(pages) if not is_complete(out, page_id(seed, i))]
    remove_temporaries_of(path for _, _, index in tasks for path in page_paths(out, page_id(seed, index)))
    with progress_bar(total=len(tasks), disable=not progress, unit="page", desc="synth") as bar:
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                _write_one(task)
                bar.update()
        else:
            chunk = max(1, min(16, len(tasks) // (workers * 4)))
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for _ in pool.imap_unordered(_write_one, tasks, chunksize=chunk):
                    bar.update()
    return CorpusResult(written=len(tasks), skipped=pages - len(tasks))
