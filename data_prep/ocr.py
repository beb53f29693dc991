"""Words of a page, with pixel boxes and line ids, from one of five OCR sources (``--ocr``).

``tesseract``
    Runs ``tesseract stdin stdout tsv`` on the decoded page (one process per page, one thread each) and keeps
    its word rows; words of one Tesseract line (same block, paragraph and line number) share a line id.
    The image's dpi is passed on when the file records one; otherwise Tesseract estimates it.

``json`` -- OCR given beside each image: ``NAME.json`` next to ``NAME.tif`` / ``NAME.png`` / ...::

    {"pages": [{"page": 0,
                "words": [{"text": "Total", "box": [x0, y0, x1, y1], "line": 0}, ...]},
               ...]}

    ``page`` is the 0-based page number in a multi-page file; ``box`` is in pixels of that page as stored in
    the image file (origin top-left; numbers may be floats); ``line`` is any integer, equal for the words of
    one OCR line or segment (its line box is the union of its word boxes). A page absent from ``pages`` is
    rejected as ``ocr_missing``; a page listed with no words as ``no_words``.

``funsd`` -- the FUNSD layout: images in ``.../images/NAME.png``, annotations in ``.../annotations/NAME.json``
    (``{"form": [{"id", "words": [{"text", "box"}], ...}]}``); the line id of a word is its entity id, so line
    boxes are FUNSD's segment boxes. Every image under an ``images`` directory below ``--input`` is used.

``hocr`` / ``alto`` -- files an OCR engine wrote beside each image (``NAME.hocr``, ``NAME.xml``): see
    ``ocr_files.py``.
"""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path
from typing import Any

from PIL import Image

from layoutlmv3.data_roots import NotARegularFile
from layoutlmv3.json_files import JsonFileError, parse_json, read_bounded

from .ocr_settings import OcrSettings, boxes_to_page, prepare_page, tesseract_dpi
from .pdf import TextLayerFirst
from .rejects import OCR_FAILED, OCR_INVALID, OCR_MISSING, OCR_TIMEOUT, PageRejected
from .tesseract_engine import (
    PersistentTesseract,
    tesseract_language_data,
    tesseract_pixels,
    tesseract_version,
    use_persistent_engine,
)
from .words import Ocr, Word  # Word is re-exported: other modules and tests import it from here

__all__ = ["OCR_KINDS", "Ocr", "Word", "make_ocr", "ocr_configuration", "parse_tsv", "run_tesseract"]

OCR_KINDS = ("tesseract", "json", "funsd", "hocr", "alto")
TSV_COLUMNS = 12  # level page_num block_num par_num line_num word_num left top width height conf text
TSV_WORD_LEVEL = "5"


def make_ocr(kind: str, timeout: float, settings: OcrSettings | None = None) -> Ocr:
    """The OCR source named by ``--ocr`` (`settings`: Tesseract's, ocr_settings.py; the default when None)."""
    if kind == "tesseract":
        return TextLayerFirst(TesseractOcr(timeout, settings))  # PDF pages with a text layer need no OCR
    if kind == "json":
        return JsonOcr()
    if kind == "funsd":
        return FunsdOcr()
    if kind in ("hocr", "alto"):
        from .ocr_files import AltoOcr, HocrOcr  # they build on Word, defined here

        return HocrOcr() if kind == "hocr" else AltoOcr()
    raise ValueError(f"unknown OCR kind {kind!r}, expected one of {OCR_KINDS}")


def ocr_configuration(kind: str, settings: OcrSettings | None = None) -> dict[str, object]:
    """What decides the words of `--ocr kind`, as the manifest and the progress records hold it: the source's name,
    and for Tesseract its settings, release and English model (other releases or models read other words)."""
    if kind != "tesseract":
        return {"source": kind}
    return {
        "source": kind,
        **(settings or OcrSettings()).as_record(),
        "tesseract_version": tesseract_version(),
        "language_data": tesseract_language_data(),
    }


class TesseractOcr:
    """Real Tesseract: kept in the process when tesserocr is built against the same Tesseract as the command
    (identical words, no process start per page: tesseract_engine.py), else the command, fed the decoded page as
    PNM on stdin (works for any page of a multi-page TIFF)."""

    def __init__(self, timeout: float, settings: OcrSettings | None = None) -> None:
        self.timeout = timeout
        self.settings = settings or OcrSettings()
        self._engine: PersistentTesseract | None = None
        self._chosen = False

    def inputs(self, pages: list[str]) -> list[str]:
        return pages

    def prepare(self) -> None:
        """Choose and start the engine, in the process that will read the pages: a failure to start stops the
        run here rather than rejecting every page as an internal error."""
        if not self._chosen:
            self._engine = PersistentTesseract(self.settings) if use_persistent_engine() else None
            self._chosen = True

    def read(self, path: Path, page: int, image: Image.Image) -> list[Word]:
        self.prepare()
        seen = prepare_page(image, self.settings)
        if self._engine is not None:
            tsv = self._engine.tsv(seen, self.timeout)
        else:
            tsv = run_tesseract(seen, self.timeout, self.settings)
        return boxes_to_page(parse_tsv(tsv), seen.size, image.size)


def run_tesseract(image: Image.Image, timeout: float, settings: OcrSettings | None = None) -> str:
    """Tesseract's TSV for ``image``; OMP_THREAD_LIMIT=1 because parallelism comes from the worker pool."""
    settings = settings or OcrSettings()
    command = ["tesseract", "stdin", "stdout", "--psm", str(settings.psm)]
    for name, value in settings.tesseract_variables().items():
        command += ["-c", f"{name}={value}"]
    if (dpi := tesseract_dpi(image)) is not None:
        command += ["--dpi", str(dpi)]
    pnm = _pnm_bytes(image)
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    try:
        done = subprocess.run(command + ["tsv"], input=pnm, capture_output=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise PageRejected(OCR_TIMEOUT, f"tesseract ran over {timeout:g} s") from None
    except FileNotFoundError:
        raise FileNotFoundError(
            "tesseract is not installed or not on PATH (Debian: apt-get install tesseract-ocr), "
            "or give the page's words as JSON"
        ) from None
    if done.returncode != 0:
        raise PageRejected(OCR_FAILED, f"tesseract exit {done.returncode}: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode("utf-8", errors="replace")


def _pnm_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    tesseract_pixels(image).save(buffer, format="PPM")  # P5 for "L", P6 for "RGB": no compression to pay for
    return buffer.getvalue()


def parse_tsv(tsv: str) -> list[Word]:
    """Word rows of Tesseract TSV, with line ids numbered 0, 1, ... by first appearance of (block, par, line)."""
    words: list[Word] = []
    lines: dict[tuple[str, ...], int] = {}
    for row in tsv.splitlines()[1:]:
        fields = row.split("\t", TSV_COLUMNS - 1)
        if len(fields) != TSV_COLUMNS or fields[0] != TSV_WORD_LEVEL or not fields[11].strip():
            continue
        left, top, width, height = (int(value) for value in fields[6:10])
        line = lines.setdefault(tuple(fields[1:5]), len(lines))
        words.append(Word(fields[11].strip(), (left, top, left + width, top + height), line))
    return words


class JsonOcr:
    """OCR given as ``NAME.json`` beside each image (format in the module docstring)."""

    def __init__(self) -> None:
        self._cached: tuple[Path, dict[int, list[Word]] | PageRejected] | None = None

    def inputs(self, pages: list[str]) -> list[str]:
        return pages

    def read(self, path: Path, page: int, image: Image.Image) -> list[Word]:
        pages = self._pages(path)
        if isinstance(pages, PageRejected):
            raise pages
        if page not in pages:
            raise PageRejected(OCR_MISSING, f"{path.with_suffix('.json').name} lists no page {page}")
        return pages[page]

    def _pages(self, path: Path) -> dict[int, list[Word]] | PageRejected:
        """Parse the file once for all pages of a multi-page image (the cache holds the current file only)."""
        if self._cached is None or self._cached[0] != path:
            self._cached = (path, _load_json_pages(path.with_suffix(".json")))
        return self._cached[1]


def _load_json_pages(path: Path) -> dict[int, list[Word]] | PageRejected:
    try:
        # a FIFO named NAME.json (it would block the worker for ever) refused unopened, a huge file unread
        data = parse_json(read_bounded(path), path.name)  # named as before: rejects carry the source's path
    except FileNotFoundError:
        return PageRejected(OCR_MISSING, f"no OCR file {path.name}")
    except (JsonFileError, NotARegularFile) as error:  # the message names the file
        return PageRejected(OCR_INVALID, str(error))
    except OSError as error:
        return PageRejected(OCR_INVALID, f"{path.name}: {error}")
    try:
        pages: dict[int, list[Word]] = {}
        for entry in data["pages"]:
            number = _integer(entry["page"])
            if number in pages:
                raise ValueError(f"page {number} listed twice")
            pages[number] = [Word(_text(w["text"]), _box(w["box"]), _integer(w["line"])) for w in entry["words"]]
        return pages
    except (KeyError, TypeError, ValueError) as error:
        return PageRejected(OCR_INVALID, f"{path.name}: {type(error).__name__}: {error}")


class FunsdOcr:
    """FUNSD annotations: ``images/NAME.png`` is described by the sibling ``annotations/NAME.json``."""

    def inputs(self, pages: list[str]) -> list[str]:
        return [source for source in pages if Path(source).parent.name == "images"]

    def read(self, path: Path, page: int, image: Image.Image) -> list[Word]:
        annotation = path.parent.parent / "annotations" / f"{path.stem}.json"
        if page != 0:
            raise PageRejected(OCR_MISSING, f"FUNSD annotations describe page 0 only, not page {page}")
        try:
            form = parse_json(read_bounded(annotation), annotation.name)["form"]  # a FIFO: refused unopened
            return [
                Word(_text(word["text"]), _box(word["box"]), _integer(entity["id"]))
                for entity in form
                for word in entity["words"]
            ]
        except FileNotFoundError:
            raise PageRejected(OCR_MISSING, f"no annotation {annotation.name}") from None
        except JsonFileError as error:  # names the file
            raise PageRejected(OCR_INVALID, str(error)) from None
        except (OSError, KeyError, TypeError, ValueError) as error:
            raise PageRejected(OCR_INVALID, f"{annotation.name}: {type(error).__name__}: {error}") from None


def _text(value: Any) -> str:
    """A word's text must be a string: str(None) would train the word "None"."""
    if not isinstance(value, str):
        raise ValueError(f"word text must be a string, got {value!r}")
    return value


def _box(value: Any) -> tuple[Any, Any, Any, Any]:
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise ValueError(f"box must be [x0, y0, x1, y1], got {value!r}")
    return tuple(value)


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value
