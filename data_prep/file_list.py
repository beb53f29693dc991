"""The page files of an input tree, listed once for every task of an array: ``python -m data_prep.file_list``.

Each task of a build finds its pages by walking --input (pages.scan_folder); at 11 M files on a shared filesystem
that walk takes minutes, and an N-task array paid it N times. ``python -m data_prep.file_list --input DIR --out
LIST`` walks once and writes the page files found, sorted, one path relative to DIR a line (UTF-8, "\\n" after
each); ``build_shards --file-list LIST`` reads them instead of walking, so the chunk plan, and every shard, is the
one the walk gives. The list's sha256 goes into the manifest ("file_list"): merge_manifests refuses tasks that
read different lists, or a list and a walk.

Threat model: the list is data a build trusts no more than a page (written by hand, edited, truncated, or
planted). It is read as bytes, never evaluated: a FIFO or device named as the list is refused unopened, a file
over MAX_LIST_BYTES by its size (and never read past it), more than MAX_LISTED_FILES lines or a line over
MAX_LINE_BYTES stop the reading. Every line must be a plain relative path (no "/" first, no ".", ".." or empty
part, no control character, UTF-8) with a page suffix (PAGE_SUFFIXES), after the line before it (sorted, so no
path twice), so no line can name a file outside --input by itself. Before a task reads a page, each of its own
files must be a regular file (data_roots.check_regular_file: a FIFO named like a page would block the worker, a
folder or device is no page; a missing file is no page either). Any error refuses the task, naming the list and
the line. Links placed in the --input tree are followed, as the walk follows them (the README's threat model:
links you place in a data folder are yours, datasets are assembled from them); resolving them and refusing those
that lead outside (data_roots.inside_root) would make a list plan other chunks than the walk that wrote it, and
would defend nothing against the list itself, which can only name paths under --input. The list is written
atomically (atomic_files): a reader sees a whole list or none. Names the format cannot hold (a line break in a
file name) are left out of the list and reported, as the walk reports what is not a page.
"""

from __future__ import annotations

import argparse
import bisect
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from layoutlmv3.atomic_files import file_in_place
from layoutlmv3.checksums import StreamDigest
from layoutlmv3.data_roots import NAME_MAX, PATH_MAX, NotARegularFile, check_regular_file
from layoutlmv3.page_sources import PAGE_SUFFIXES

from .pages import InputScan, scan_folder

MAX_LISTED_FILES = 100_000_000  # ten times IIT-CDIP's 11 M files
MAX_LINE_BYTES = PATH_MAX  # a path and its "\n"
MAX_LIST_BYTES = 8 << 30  # 8 GiB: IIT-CDIP's list is about 0.4 GiB
UNLISTABLE = "(name a file list cannot hold)"  # how the writer reports a name with a control character in it
READ_BLOCK = 1 << 24
_PART = r"(?!\.\.?(?:/|$))[^/\x00-\x1f\x7f]+"
_SUFFIXES = "|".join(re.escape(suffix[1:]) for suffix in sorted(PAGE_SUFFIXES))
# Lines entry_problem accepts, most of them, in one match (the reading of 11 M lines is seconds, not minutes):
# a line it does not match is judged by entry_problem itself.
_PLAIN_ENTRY = re.compile(rf"(?:{_PART}/)*[^/\x00-\x1f\x7f]+\.(?i:{_SUFFIXES})", re.ASCII)


class FileListError(ValueError):
    """A file list that cannot be used; the message names the list and, for a bad line, its number."""


@dataclass(frozen=True)
class FileList:
    """A list as read: the page files (sorted, distinct, relative to --input) and the digest of its bytes."""

    path: Path
    pages: list[str]
    sha256: str

    def record(self) -> dict[str, object]:
        """What the manifest keeps ("file_list"): tasks of one job must have read the same list."""
        return {"sha256": self.sha256, "files": len(self.pages)}

    def where(self, page: str) -> str:
        """``LIST:LINE`` of a listed page, for errors (the list is sorted: found by bisection)."""
        return f"{self.path}:{bisect.bisect_left(self.pages, page) + 1}"


def entry_problem(entry: str) -> str | None:
    """Why `entry` cannot be a line of a file list (None: it can): the rules of the module docstring that need no
    filesystem. The writer and the reader apply the same ones, so what one writes the other reads."""
    if not entry:
        return "an empty line"
    if any(ord(character) < 32 or ord(character) == 127 for character in entry):
        return f"{entry!r} holds a control character"
    if entry.startswith("/"):
        return f"{entry!r} is an absolute path; lines are paths relative to --input"
    parts = entry.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return f"{entry!r} is not a plain relative path (an empty, '.' or '..' part)"
    if any(len(part.encode()) > NAME_MAX for part in parts):
        return f"{entry[:60]!r}... has a name longer than {NAME_MAX} bytes"
    if PurePosixPath(entry).suffix.lower() not in PAGE_SUFFIXES:
        return f"{entry!r} is not a page file (read: {' '.join(sorted(PAGE_SUFFIXES))})"
    return None


def read_file_list(path: Path) -> FileList:
    """The list at `path`, every line checked (FileListError naming the line at the first bad one)."""
    try:
        size = check_regular_file(path).st_size
    except (OSError, NotARegularFile) as error:
        raise FileListError(f"cannot read the file list: {error}") from None
    if size > MAX_LIST_BYTES:
        raise FileListError(f"{path} is {size} bytes, over {MAX_LIST_BYTES}: not a file list")
    pages: list[str] = []
    digest = StreamDigest()
    read, pending = 0, b""
    with open(path, "rb") as stream:
        while block := stream.read(READ_BLOCK):
            read += len(block)
            if read > MAX_LIST_BYTES:
                raise FileListError(f"{path}: the list grew past {MAX_LIST_BYTES} bytes while read")
            digest.update(block)
            lines = (pending + block).split(b"\n")
            pending = lines.pop()
            for line in lines:
                _add(pages, line, path)
            if len(pending) >= MAX_LINE_BYTES:
                _add(pages, pending, path)  # refused: too long
        if pending:  # a last line without its "\n"
            _add(pages, pending, path)
    return FileList(path, pages, digest.hexdigest())


def _add(pages: list[str], raw: bytes, path: Path) -> None:
    """Check one line (`raw`, without its "\n") against the rules and the line before it, then keep it."""
    where = f"{path}:{len(pages) + 1}"
    if len(pages) >= MAX_LISTED_FILES:
        raise FileListError(f"{where}: more than {MAX_LISTED_FILES} lines")
    if len(raw) >= MAX_LINE_BYTES:
        raise FileListError(f"{where}: a line longer than {MAX_LINE_BYTES - 1} bytes (no path is)")
    try:
        entry = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FileListError(f"{where}: not UTF-8 ({error})") from None
    if (not _PLAIN_ENTRY.fullmatch(entry) or len(raw) > NAME_MAX) and (problem := entry_problem(entry)):
        raise FileListError(f"{where}: {problem}")
    if pages and entry <= pages[-1]:
        what = "listed twice" if entry == pages[-1] else "out of order (the list must be sorted: LC_ALL=C sort -u)"
        raise FileListError(f"{where}: {entry!r} is {what}")
    pages.append(entry)


def check_listed_pages(root: Path, listed: FileList, pages: Iterable[str]) -> None:
    """Refuse (FileListError naming the line) a page of `pages` (a task's share of the list) that is not a regular
    file under `root` (links followed, as by the walk): gone since the list was written, or never a page."""
    for page in pages:
        try:
            check_regular_file(root / page)
        except (OSError, NotARegularFile) as error:
            raise FileListError(f"{listed.where(page)}: {page!r} under {root}: {error}") from None


def write_file_list(root: Path, out: Path) -> tuple[InputScan, str]:
    """Walk `root` once and write its page files to `out` atomically; returns the walk (pages listed, what was
    skipped) and the list's sha256. A tree without pages is FileListError, and no list is written."""
    scan = scan_folder(root)
    listable = []
    for page in scan.pages:
        if entry_problem(page) is None:
            listable.append(page)
        else:
            scan.skip(UNLISTABLE, page)
    scan.pages = listable
    if not listable:
        note = f"; {scan.skipped_note()}" if scan.skipped else ""
        raise FileListError(f"no page files under {root} (read: {' '.join(sorted(PAGE_SUFFIXES))}){note}")
    digest = StreamDigest()
    out.parent.mkdir(parents=True, exist_ok=True)
    with file_in_place(out) as temporary, open(temporary, "wb") as stream:
        for start in range(0, len(listable), 100_000):
            data = "".join(f"{page}\n" for page in listable[start : start + 100_000]).encode("utf-8")
            digest.update(data)
            stream.write(data)
    return scan, digest.hexdigest()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.file_list",
        description="Walk an input tree once and write its page files (sorted, relative to --input, one a line) "
        "for `python -m data_prep.build_shards --file-list LIST`: the tasks of an array read the list instead of "
        "each walking the tree. The list is written atomically; pages added to --input later are not built.",
    )
    parser.add_argument("--input", required=True, type=Path, metavar="DIR", help="root directory of the page images")
    parser.add_argument("--out", required=True, type=Path, metavar="LIST", help="the list to write (replaced whole)")
    args = parser.parse_args(argv)
    if not args.input.is_dir():
        parser.error(f"--input {args.input} is not a directory")
    try:
        scan, sha256 = write_file_list(args.input, args.out)
    except FileListError as error:
        sys.exit(f"error: {error}")
    except OSError as error:
        from .build_shards import storage_error  # the build's wording for a full, read-only or unreadable disk

        sys.exit(f"error: {storage_error(error, args.out.parent)}")
    if note := scan.skipped_note():
        print(f"warning: {note}", file=sys.stderr)
    print(f"listed {len(scan.pages)} page files under {args.input} -> {args.out} (sha256 {sha256})")


if __name__ == "__main__":
    main()
