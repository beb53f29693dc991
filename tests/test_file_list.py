"""The shared file list (data_prep/file_list.py): one walk for every task, the same chunks as the walk, and a list
from data refused line by line when it is not what the writer writes."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from data_prep import build_shards, file_list
from data_prep.build_shards import build
from data_prep.file_list import FileListError, entry_problem, read_file_list, write_file_list
from data_prep.manifest import MergeError, merge_task_manifests
from layoutlmv3.data.sample_format import MANIFEST_FILE, REJECTS_FILE
from layoutlmv3.page_sources import PAGE_SUFFIXES
from tests.shard_build import config, output_files, shard_bytes


def test_a_build_from_the_list_writes_the_walks_shards(corpus_dir, tokenizer_dir, tmp_path, capsys) -> None:
    """Same chunks, byte for byte, from the walk and from the list that walk wrote; a page added to --input after
    the list was written is not read (the build never walked); the manifest and the output line name the list."""
    walked = build(config(corpus_dir, tmp_path / "walked", tokenizer_dir, files_per_chunk=4, max_samples_per_shard=3))
    listing = tmp_path / "lists" / "files.txt"
    file_list.main(["--input", str(corpus_dir), "--out", str(listing)])
    said = capsys.readouterr().out
    assert said.startswith(f"listed 14 page files under {corpus_dir} -> {listing} (sha256 ")
    lines = listing.read_text().splitlines()
    assert lines == sorted(lines) and "images/broken.png" in lines and len(lines) == 14
    late = corpus_dir / "images" / "zz_late.png"
    Image.new("L", (60, 60), 255).save(late)  # after the list was written
    try:
        argv = ["--input", str(corpus_dir), "--ocr", "funsd", "--tokenizer", str(tokenizer_dir), "--quiet"]
        argv += [
            "--files-per-chunk",
            "4",
            "--max-samples-per-shard",
            "3",
            "--file-list",
            str(listing),
            "--workers",
            "1",
        ]
        build_shards.main([*argv, "--out", str(tmp_path / "listed")])
    finally:
        late.unlink()
    assert f"(pages from --file-list {listing}, sha256 " in capsys.readouterr().out
    assert shard_bytes(tmp_path / "listed") == shard_bytes(tmp_path / "walked")
    listed_files, walked_files = output_files(tmp_path / "listed"), output_files(tmp_path / "walked")
    assert listed_files[REJECTS_FILE] == walked_files[REJECTS_FILE]
    manifest = json.loads((tmp_path / "listed" / MANIFEST_FILE).read_text())
    sha256 = read_file_list(listing).sha256
    assert manifest.pop("file_list") == {"sha256": sha256, "files": 14} and sha256 in said
    assert manifest == walked and "file_list" not in walked


def test_merge_refuses_tasks_of_another_list_or_a_walk(corpus_dir, tokenizer_dir, tmp_path) -> None:
    listing = tmp_path / "files.txt"
    write_file_list(corpus_dir, listing)
    job = config(corpus_dir, tmp_path / "out", tokenizer_dir, num_tasks=2)
    build(replace(job, file_list=listing))
    build(replace(job, task_index=1))  # walked
    with pytest.raises(MergeError, match=r"disagree on 'file_list': manifest.task0000-of-0002.json has \{"):
        merge_task_manifests(tmp_path / "out")
    shorter = tmp_path / "shorter.txt"
    shorter.write_text("".join(listing.read_text().splitlines(keepends=True)[:-1]))
    build(replace(job, task_index=1, file_list=shorter, out=tmp_path / "other"))  # its own --out: its chunks differ
    os.replace(
        tmp_path / "other" / "manifest.task0001-of-0002.json", tmp_path / "out" / "manifest.task0001-of-0002.json"
    )
    with pytest.raises(MergeError, match='"files": 13, "sha256"'):
        merge_task_manifests(tmp_path / "out")


PAGE = "a/page.png"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([PAGE, "../outside.png"], r":2: '../outside.png' is not a plain relative path"),
        (["/etc/page.png"], r":1: '/etc/page.png' is an absolute path"),
        (["a/./page.png"], r":1: 'a/./page.png' is not a plain relative path"),
        (["a//page.png"], r":1: 'a//page.png' is not a plain relative path"),
        ([PAGE, "a/notes.txt"], r":2: 'a/notes.txt' is not a page file \(read: .bmp"),
        ([PAGE, PAGE], r":2: 'a/page.png' is listed twice"),
        (["b.png", PAGE], r":2: 'a/page.png' is out of order \(the list must be sorted: LC_ALL=C sort -u\)"),
        ([PAGE, ""], r":2: an empty line"),
        (["a/pa\tge.png"], r":1: 'a/pa\\tge.png' holds a control character"),
        (["a/page.png\r"], r":1: 'a/page.png\\r' holds a control character"),  # written on Windows
        (["x" * 300 + ".png"], r":1: 'xxx.*has a name longer than 255 bytes"),
        (["a/" * 2100 + "p.png"], r":1: a line longer than 4095 bytes"),
    ],
)
def test_bad_lines_are_refused_naming_the_line(tmp_path, lines, message) -> None:
    listing = tmp_path / "files.txt"
    listing.write_text("".join(f"{line}\n" for line in lines))
    with pytest.raises(FileListError, match=f"^{listing}{message}"):
        read_file_list(listing)


def test_a_list_that_is_not_utf8_or_over_a_bound_is_refused(tmp_path, monkeypatch) -> None:
    listing = tmp_path / "files.txt"
    listing.write_bytes(b"a/page.png\ncaf\xe9.png\n")  # Latin-1
    with pytest.raises(FileListError, match=f"^{listing}:2: not UTF-8"):
        read_file_list(listing)
    listing.write_text("a.png\nb.png\nc.png")  # no "\n" after the last line: still read
    assert read_file_list(listing).pages == ["a.png", "b.png", "c.png"]
    monkeypatch.setattr(file_list, "MAX_LISTED_FILES", 2)
    with pytest.raises(FileListError, match=f"^{listing}:3: more than 2 lines"):
        read_file_list(listing)
    monkeypatch.setattr(file_list, "MAX_LIST_BYTES", 10)
    with pytest.raises(FileListError, match=f"^{listing} is 17 bytes, over 10: not a file list"):
        read_file_list(listing)
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    with pytest.raises(FileListError, match="FIFO .named pipe.*refused unread"):  # would block for ever if opened
        read_file_list(fifo)
    with pytest.raises(FileListError, match="cannot read the file list: .*No such file"):
        read_file_list(tmp_path / "missing.txt")


@pytest.mark.parametrize("kind", ["fifo", "missing", "folder", "broken link"])
def test_a_task_refuses_listed_files_that_are_not_regular(corpus_dir, tokenizer_dir, tmp_path, kind) -> None:
    """Checked for the task's own files, before any page is read: the error names the list's line."""
    tree = tmp_path / "in"
    (tree / "images").mkdir(parents=True)
    (tree / "annotations").mkdir()
    bad = tree / "images" / "bad.png"
    if kind == "fifo":
        os.mkfifo(bad)
    elif kind == "folder":
        bad.mkdir()
    elif kind == "broken link":
        bad.symlink_to(tmp_path / "gone.png")
    listing = tmp_path / "files.txt"
    listing.write_text("images/a.png\nimages/bad.png\n")
    (tree / "images" / "a.png").write_bytes(b"")
    expected = {"fifo": "is a FIFO", "missing": "No such file", "folder": "is a folder", "broken link": "No such"}
    with pytest.raises(FileListError, match=f"^{listing}:2: 'images/bad.png' under {tree}: .*{expected[kind]}"):
        build(config(tree, tmp_path / "out", tokenizer_dir, file_list=listing))
    assert not list((tmp_path / "out").glob("*.tar"))


def test_links_in_the_tree_are_followed_as_by_the_walk(corpus_dir, tokenizer_dir, tmp_path) -> None:
    """A tree assembled from links to files elsewhere (the user's links: trusted, README's threat model) gives the
    list the walk's chunks, byte for byte."""
    tree = tmp_path / "in"
    for folder in ("images", "annotations"):
        (tree / folder).mkdir(parents=True)
        for path in sorted((corpus_dir / folder).iterdir())[:3]:
            (tree / folder / path.name).symlink_to(path)
    build(config(tree, tmp_path / "walked", tokenizer_dir))
    write_file_list(tree, tmp_path / "files.txt")
    build(config(tree, tmp_path / "listed", tokenizer_dir, file_list=tmp_path / "files.txt"))
    assert shard_bytes(tmp_path / "listed") == shard_bytes(tmp_path / "walked") != {}


def test_the_writer_leaves_out_names_a_list_cannot_hold_and_writes_whole(tmp_path, capsys) -> None:
    tree = tmp_path / "in"
    tree.mkdir()
    for name in ("b.png", "a.tif", "line\nbreak.png", "notes.txt"):
        (tree / name).write_bytes(b"")
    listing = tmp_path / "files.txt"
    file_list.main(["--input", str(tree), "--out", str(listing)])
    assert listing.read_text() == "a.tif\nb.png\n" and not list(tmp_path.glob(".*.tmp"))
    err = capsys.readouterr().err
    assert "1 (name a file list cannot hold) (e.g. line\\nbreak.png)" in err and "1 .txt (e.g. notes.txt)" in err
    assert read_file_list(listing).pages == ["a.tif", "b.png"]  # what the writer writes, the reader reads
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match=f"error: no page files under {empty}"):
        file_list.main(["--input", str(empty), "--out", str(tmp_path / "none.txt")])
    assert not (tmp_path / "none.txt").exists()


def test_lines_across_read_blocks_are_read_and_numbered_as_one(tmp_path, monkeypatch) -> None:
    """The list is read in blocks: a line cut by a block's end is still one line, and counted once."""
    monkeypatch.setattr(file_list, "READ_BLOCK", 7)
    listing = tmp_path / "files.txt"
    pages = [f"scan/{number:03d}/page.TIF" for number in range(40)]
    listing.write_text("".join(f"{page}\n" for page in pages))
    listed = read_file_list(listing)
    assert listed.pages == pages and listed.where(pages[17]) == f"{listing}:18"
    assert listed.sha256 == hashlib.sha256(listing.read_bytes()).hexdigest()
    listing.write_text("".join(f"{page}\n" for page in pages[:30]) + "scan/030/../page.tif\n")
    with pytest.raises(FileListError, match=f"^{listing}:31: 'scan/030/../page.tif' is not a plain relative path"):
        read_file_list(listing)


_LIST_LINES = st.lists(
    st.one_of(
        st.sampled_from(["a.png", "b/c.tif", "../x.png", "/abs.png", "./d.jpg", "e//f.png", "g/./h.pdf", "x.txt", ""]),
        st.text(min_size=0, max_size=40),
        st.binary(min_size=0, max_size=40).map(lambda raw: raw.decode("latin-1")),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=2000, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(lines=_LIST_LINES, ending=st.sampled_from(["\n", "\r\n", ""]), raw_tail=st.binary(max_size=8))
def test_any_list_is_read_or_refused_by_name(tmp_path: Path, lines: list[str], ending: str, raw_tail: bytes) -> None:
    """Fuzzed: whatever bytes a list holds, reading it gives sorted, distinct, plain relative page paths with page
    suffixes, or one FileListError naming the list -- never another exception."""
    path = tmp_path / "list.txt"
    path.write_bytes(ending.join(lines).encode("utf-8", "surrogateescape") + raw_tail)
    try:
        listed = read_file_list(path)
    except FileListError as error:
        assert str(path) in str(error)
        return
    assert listed.pages == sorted(set(listed.pages))
    for page in listed.pages:
        parts = page.split("/")
        assert not page.startswith("/") and "" not in parts and "." not in parts and ".." not in parts, page
        assert Path(page).suffix.lower() in PAGE_SUFFIXES and entry_problem(page) is None, page
