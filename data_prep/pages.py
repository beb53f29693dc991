"""Find scanned page images under an input root and read them page by page, never crashing on bad files.

Reads the page files of `layoutlmv3.page_sources.PAGE_SUFFIXES`: TIFF (multi-page included, and CCITT Group 4
bilevel as IIT-CDIP ships it), PNG, JPEG, GIF, BMP, WebP through Pillow; and PDF, each page rendered at
``pdf_dpi`` (pdf.py). Every page (each TIFF frame, each PDF page) is measured against the one pixel cap before
it is decoded: a page over it is a ``page_too_large`` reject; a file's pages past MAX_PAGES_PER_FILE are one
``too_many_pages`` reject. A FIFO, device or broken link named like a page is listed as skipped, never opened.
Pages come out in mode "L" (bilevel and grayscale scans) or "RGB" (colour), the two modes of a sample image. A file or page that Pillow cannot decode becomes a :class:`PageRejected` in the stream instead
of an exception, so one corrupt scan never stops a run.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from layoutlmv3 import page_sources
from layoutlmv3.page_layout import to_sample_mode
from layoutlmv3.page_sources import (
    PAGE_SUFFIXES,
    PDF_SUFFIX,
    PageTooLarge,
    check_frame,
    open_image,
    pages_past_cap,
)

from .pdf import DEFAULT_PDF_DPI, read_pdf_pages
from .rejects import PAGE_TOO_LARGE, TOO_MANY_PAGES, UNREADABLE_IMAGE, UNREADABLE_PAGE, PageRejected

# Files that sit beside page images as their OCR or annotations: not reported as skipped.
SIDE_FILE_SUFFIXES = frozenset({".json", ".hocr", ".html", ".htm", ".xml"})
NOT_A_FILE = "(broken link or not a regular file)"  # how a scan lists entries that are neither file nor folder
NOT_UTF8 = "(file name not UTF-8)"  # names that records (JSON, UTF-8) cannot hold: rename them to read them
LINK_LOOP = "(link to a folder it is inside of: not walked again)"  # e.g. in/a/up -> in: walked, it never ends
UNREADABLE_FOLDER = "(folder that cannot be listed)"  # no permission, or gone while walked


@dataclass
class InputScan:
    """What a walk of an input folder found: page files (sorted POSIX paths relative to it), other files counted
    by suffix, and the first of each such suffix as an example."""

    pages: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def skip(self, kind: str, relative: str) -> None:
        """Count a file that is not read, keeping the first of its kind as the example (printable, whatever bytes
        its name holds: undecodable bytes and control characters escaped, so the note stays one line and a name
        cannot drive the terminal)."""
        self.skipped[kind] += 1
        if kind not in self.examples:
            text = os.fsencode(relative).decode("utf-8", "backslashreplace")
            self.examples[kind] = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)

    def skipped_note(self) -> str:
        """'' if nothing was skipped, else one line naming the files that are not pages (by type, with examples)."""
        if not self.skipped:
            return ""
        kinds = ", ".join(
            f"{count} {suffix} (e.g. {self.examples[suffix]})" for suffix, count in sorted(self.skipped.items())
        )
        return f"skipped {sum(self.skipped.values())} file(s) of other types than pages: {kinds}"


def scan_folder(root: Path) -> InputScan:
    """The page files under ``root`` and what was skipped (broken links, FIFOs and devices whatever their suffix,
    pages whose names are not UTF-8, links that loop, folders that cannot be listed). Hidden files (temporaries) and
    OCR side files are neither. Links are followed, to files and to folders (_tree). One walk of the tree, which on a
    corpus of millions of files on a shared filesystem is minutes."""
    scan = InputScan()
    for path in _tree(root, scan):
        if path.name.startswith("."):
            continue
        relative = path.relative_to(root).as_posix()
        if not path.is_file():
            if not path.is_dir():  # a broken link, FIFO, socket or device: never opened (a FIFO blocks), but listed
                scan.skip(NOT_A_FILE, relative)
            continue
        suffix = path.suffix.lower()
        if suffix in PAGE_SUFFIXES:
            try:
                relative.encode("utf-8")
            except UnicodeEncodeError:  # bytes that are not UTF-8 (a Latin-1 "café.png"): no record could name it
                scan.skip(NOT_UTF8, relative)
                continue
            scan.pages.append(relative)
        elif suffix not in SIDE_FILE_SUFFIXES:
            scan.skip(suffix or "(no suffix)", relative)
    scan.pages.sort()
    return scan


def _tree(root: Path, scan: InputScan) -> Iterator[Path]:
    """Every entry under `root`, links to folders followed (README: links you place in a data folder are yours;
    Path.rglob on Python < 3.13 silently goes past them), except a link back to a folder it is inside of (reported,
    not walked again: the walk ends). One listing per folder, in name order."""
    try:
        stack = [(root, frozenset({_folder_identity(root)}))]
    except OSError:  # no such folder: nothing under it (callers name a missing --input themselves)
        return
    while stack:
        folder, inside = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError:
            if folder != root:
                scan.skip(UNREADABLE_FOLDER, folder.relative_to(root).as_posix())
            continue
        folders = []
        for entry in entries:
            path = folder / entry.name
            yield path
            try:
                if not entry.is_dir():  # follows a link
                    continue
                identity = _folder_identity(path)
            except OSError:
                continue
            if identity in inside:
                scan.skip(LINK_LOOP, path.relative_to(root).as_posix())
            else:
                folders.append((path, inside | {identity}))
        stack.extend(reversed(folders))  # the first folder is walked next


def _folder_identity(folder: Path) -> tuple[int, int]:
    status = folder.stat()
    return status.st_dev, status.st_ino


def scan_inputs(root: Path) -> tuple[list[str], Counter[str]]:
    """(page files under ``root`` as sorted POSIX paths relative to it, other files counted by suffix)."""
    scan = scan_folder(root)
    return scan.pages, scan.skipped


def read_pages(
    path: Path, start_page: int = 0, pdf_dpi: int = DEFAULT_PDF_DPI
) -> Iterator[tuple[int, Image.Image | PageRejected]]:
    """Yield ``(page_number, image or PageRejected)`` for pages ``start_page..`` of the file, in order.

    A file that cannot be opened yields a single UNREADABLE_IMAGE for ``start_page`` (its page count is
    unknown); a page that fails to decode yields UNREADABLE_PAGE and reading goes on with the next page.
    Pillow raises many exception types on corrupt data (OSError, SyntaxError, ValueError, struct.error, ...),
    hence the broad catches.
    """
    if path.suffix.lower() == PDF_SUFFIX:
        yield from read_pdf_pages(path, start_page, pdf_dpi)
        return
    try:
        image = open_image(path, check=False)  # each frame is measured in _load_page, before it is decoded
    except PageTooLarge as error:
        yield start_page, PageRejected(PAGE_TOO_LARGE, error)
        return
    except Exception as error:
        yield start_page, PageRejected(UNREADABLE_IMAGE, f"{type(error).__name__}: {error}")
        return
    with image:
        yield from _frames(image, start_page)


def _frames(image: Image.Image, start_page: int) -> Iterator[tuple[int, Image.Image | PageRejected]]:
    """Each frame of an opened file from ``start_page`` in turn, until its end. A frame whose directory is broken
    is UNREADABLE_PAGE and the last (the ones after it cannot be located); frames from MAX_PAGES_PER_FILE on are
    one TOO_MANY_PAGES reject. Frames are not counted up front: Pillow's n_frames walks a TIFF's page directories
    in quadratic time (100000 frames in a 10 MB file: minutes, 1 M: hours), seeking stops at the cap."""
    page = start_page
    while True:
        try:
            image.seek(page)
        except EOFError:
            return
        except Exception as error:
            if page >= page_sources.MAX_PAGES_PER_FILE:  # past the cap whatever is there
                yield page, PageRejected(TOO_MANY_PAGES, pages_past_cap(page, "image"))
                return
            detail = f"{type(error).__name__}: {error} (its page directory is broken: later pages cannot be located)"
            yield page, PageRejected(UNREADABLE_PAGE, detail)
            return
        if page >= page_sources.MAX_PAGES_PER_FILE:
            yield page, PageRejected(TOO_MANY_PAGES, pages_past_cap(page, "image"))
            return
        yield page, _load_page(image, page)
        page += 1


def _load_page(image: Image.Image, page: int) -> Image.Image | PageRejected:
    try:
        image.seek(page)
        check_frame(image, f"page {page}")  # before decoding: Pillow measures only a file's first frame
    except PageTooLarge as error:
        return PageRejected(PAGE_TOO_LARGE, error)
    except Exception as error:
        return PageRejected(UNREADABLE_PAGE, f"{type(error).__name__}: {error}")
    try:
        image.load()
        return to_sample_mode(image)
    except Exception as error:
        return PageRejected(UNREADABLE_PAGE, f"{type(error).__name__}: {error}")


def read_page(path: Path, page: int = 0, pdf_dpi: int = DEFAULT_PDF_DPI) -> Image.Image:
    """One page of a file (any of PAGE_SUFFIXES; other files as Pillow reads them), for the prediction tools:
    a page that cannot be read, or one over the pixel cap, is a ValueError naming the file, page and reason."""
    for number, image in read_pages(path, page, pdf_dpi):
        if isinstance(image, PageRejected):
            raise ValueError(f"{path} page {number}: {image}")
        return image
    raise ValueError(f"{path} has no page {page}")
