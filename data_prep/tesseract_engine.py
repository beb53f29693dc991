"""Tesseract kept in the process through the tesserocr binding: what `--ocr tesseract` uses when tesserocr is
installed and built against the same Tesseract as the `tesseract` command (then words and boxes are identical:
tested; and a page costs ~0.6 of the command's time, no process start: BENCHMARKS.md). Otherwise, or with
LAYOUTLMV3_OCR_ENGINE=cli, the command runs per page as before.

tesserocr's PyPI wheel bundles another Tesseract release whose words differ; build it against the system's
instead: `apt-get install libtesseract-dev libleptonica-dev pkg-config` then
`pip install --no-binary tesserocr tesserocr` (`make test` does).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from PIL import Image

from layoutlmv3.checksums import ALGORITHM, file_digest

from .ocr_settings import OcrSettings, tesseract_dpi
from .rejects import OCR_FAILED, OCR_TIMEOUT, PageRejected

logger = logging.getLogger(__name__)

ENGINE_ENV = "LAYOUTLMV3_OCR_ENGINE"  # auto (default) | cli | api
WORKER_ENV = "LAYOUTLMV3_OCR_WORKER"  # set in the environment of data prep's spawned workers
TSV_HEADER = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n"


def persistent_engine_problem() -> str | None:
    """Why the in-process engine cannot stand in for the command (None: it can)."""
    return _problem(os.environ.get(ENGINE_ENV, "auto"), os.environ.get("PATH", ""))


@cache
def _problem(engine: str, path: str) -> str | None:
    if engine == "cli":
        return f"{ENGINE_ENV}=cli"
    try:
        import tesserocr
    except ImportError:
        return "tesserocr is not installed"
    library = tesserocr.tesseract_version().split()[1]
    command = tesseract_version()
    if command is None:
        return "the tesseract command is missing"
    if library != command:
        return f"tesserocr uses Tesseract {library}, the command {command}: their words differ"
    return None


def tesseract_version() -> str | None:
    """The `tesseract` command's release (e.g. "5.3.0"; None when it is missing): other releases read other words,
    so it is part of a corpus's OCR configuration (recorded in the manifest and the chunk digests). The in-process
    engine runs only when tesserocr's library is this same release."""
    return _version(os.environ.get("PATH", ""))


@cache  # asked once per process for a given PATH (a test's fake tesseract must not stick)
def _version(path: str) -> str | None:
    try:
        return subprocess.run(["tesseract", "--version"], capture_output=True, text=True).stdout.split()[1]
    except (OSError, IndexError):
        return None


def tesseract_language_data() -> str | None:
    """The English model Tesseract reads with, as "sha256:<first 16 hex digits>" of its eng.traineddata (None when
    it cannot be found): another model (tessdata_fast, _best, a newer Debian package) reads other words as surely
    as another release does, so it is recorded beside the version."""
    return _language_data(os.environ.get("PATH", ""), os.environ.get("TESSDATA_PREFIX"))


@cache  # hashed once per process for a given command and model folder
def _language_data(path: str, tessdata_prefix: str | None) -> str | None:
    try:
        listing = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r'"([^"]+)"', listing.stdout + listing.stderr)
    model = Path(found.group(1)) / "eng.traineddata" if found else None
    if model is None or not model.is_file():
        return None
    return f"{ALGORITHM}:{file_digest(model)[:16]}"


def use_persistent_engine() -> bool:
    """Whether `--ocr tesseract` runs in-process here: in data prep's pool workers, started with one OpenMP thread
    (see worker_environment), or anywhere with LAYOUTLMV3_OCR_ENGINE=api (which insists, failing loudly)."""
    problem = persistent_engine_problem()
    if os.environ.get(ENGINE_ENV) == "api":
        if problem:
            raise RuntimeError(f"{ENGINE_ENV}=api, but {problem}")
        return True
    return problem is None and os.environ.get(WORKER_ENV) == "1"


@contextlib.contextmanager
def worker_environment() -> Iterator[None]:
    """Environment for spawning OCR workers: OpenMP limited to one thread from the start (libgomp reads the limit
    once, when it loads; a worker that inherited more threads oversubscribes the cores: 4x slower per page,
    measured), and the mark that lets them run Tesseract in-process."""
    saved = {name: os.environ.get(name) for name in (WORKER_ENV, "OMP_THREAD_LIMIT")}
    os.environ.update({WORKER_ENV: "1", "OMP_THREAD_LIMIT": "1"})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def tesseract_pixels(image: Image.Image) -> Image.Image:
    """The page as both engines hand it to Tesseract: grey or colour as it is, any other mode ("P", "CMYK", "LA",
    "1", "I;16", ...) as RGB, so the command's PNM and the engine's raw bytes are the same pixels."""
    return image if image.mode in ("L", "RGB") else image.convert("RGB")


class PersistentTesseract:
    """One Tesseract engine for the life of the process; Tesseract's TSV of a page, as the command prints it."""

    def __init__(self, settings: OcrSettings | None = None) -> None:
        import tesserocr

        settings = settings or OcrSettings()
        self._api = tesserocr.PyTessBaseAPI(lang="eng", psm=settings.psm)
        for name, value in settings.tesseract_variables().items():
            if not self._api.SetVariable(name, value):
                raise RuntimeError(f"Tesseract has no variable {name!r}")

    def tsv(self, image: Image.Image, timeout: float) -> str:
        # Raw pixels, as the command's PNM on stdin: no resolution unless --dpi would be passed (SetImage would hand
        # Tesseract a BMP that claims 96 dpi, and its words would differ on pages without one).
        image = tesseract_pixels(image)
        channels = 1 if image.mode == "L" else 3
        self._api.SetImageBytes(image.tobytes(), image.width, image.height, channels, channels * image.width)
        if (dpi := tesseract_dpi(image)) is not None:  # as run_tesseract passes --dpi
            self._api.SetSourceResolution(dpi)
        if not self._api.Recognize(int(timeout * 1000)):
            raise PageRejected(OCR_TIMEOUT, f"tesseract ran over {timeout:g} s (or failed)")
        text = self._api.GetTSVText(0)
        if text is None:
            raise PageRejected(OCR_FAILED, "tesseract gave no TSV")
        return TSV_HEADER + text
