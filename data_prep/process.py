"""The per-file work done in worker processes: read each page, OCR it, build its sample, or reject it.

A worker is set up once (:func:`init_worker`: OCR source and tokenizer) and then maps :class:`WorkItem` to the
file's page outcomes, in page order. Any exception is turned into a reject, so no input can stop a run; an
exception that is not a :class:`PageRejected` is a bug and is reported as ``internal_error`` with its message.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from layoutlmv3.tokenizer import LayoutLMv3Tokenizer

from .ocr import Ocr, make_ocr
from .ocr_settings import OcrSettings
from .pages import read_pages
from .pdf import DEFAULT_PDF_DPI
from .rejects import DUPLICATE_KEY, INTERNAL_ERROR, PageRejected, Reject
from .samples import Sample, build_sample


@dataclass(frozen=True)
class WorkItem:
    """Pages ``start_page..`` of one input file, the ``file_index``-th file of chunk ``chunk``."""

    root: Path
    source: str  # path relative to root: the sample's "source"
    start_page: int
    chunk: int
    file_index: int
    duplicate_of: str | None = None  # an earlier source with the same sample keys: reject without reading


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker needs, picklable so spawned processes can rebuild it."""

    ocr: str
    ocr_timeout: float
    tokenizer_dir: Path
    pdf_dpi: int = DEFAULT_PDF_DPI
    ocr_settings: OcrSettings = OcrSettings()  # Tesseract's (--ocr tesseract only)


class PageProcessor:
    """Turns the pages of one file into samples or rejects."""

    def __init__(self, ocr: Ocr, tokenizer: LayoutLMv3Tokenizer, pdf_dpi: int = DEFAULT_PDF_DPI) -> None:
        self.ocr = ocr
        self.tokenizer = tokenizer
        self.pdf_dpi = pdf_dpi

    def process(self, item: WorkItem) -> list[Sample | Reject]:
        if item.duplicate_of is not None:
            return [Reject(item.source, item.start_page, DUPLICATE_KEY, f"same sample keys as {item.duplicate_of}")]
        path = item.root / item.source
        outcomes: list[Sample | Reject] = []
        for page, image in read_pages(path, item.start_page, self.pdf_dpi):
            outcomes.append(self._page(path, item.source, page, image))
        return outcomes

    def _page(self, path: Path, source: str, page: int, image: Image.Image | PageRejected) -> Sample | Reject:
        try:
            if isinstance(image, PageRejected):
                raise image
            return build_sample(source, page, image, self.ocr.read(path, page, image), self.tokenizer)
        except PageRejected as rejected:
            return rejected.reject(source, page)
        except Exception as error:
            print(f"internal error on {source} page {page}:\n{traceback.format_exc()}", file=sys.stderr)
            return Reject(source, page, INTERNAL_ERROR, f"{type(error).__name__}: {error}")


def make_processor(setup: WorkerSetup) -> PageProcessor:
    return PageProcessor(
        make_ocr(setup.ocr, setup.ocr_timeout, setup.ocr_settings),
        LayoutLMv3Tokenizer.from_pretrained(setup.tokenizer_dir),
        setup.pdf_dpi,
    )


_processor: PageProcessor | None = None


def init_worker(setup: WorkerSetup) -> None:
    """Pool initializer: build the worker's processor once (tokenizer loading is not free)."""
    global _processor
    _processor = make_processor(setup)
    if hasattr(_processor.ocr, "prepare"):
        _processor.ocr.prepare()  # an engine that cannot start breaks the pool: the run stops with the reason


def process_in_worker(item: WorkItem) -> tuple[WorkItem, list[Sample | Reject]]:
    assert _processor is not None, "init_worker was not run in this process"
    return item, _processor.process(item)
