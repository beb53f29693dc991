"""Pages and the data roots they come from: paths named in data files stay inside their root, one pixel cap for
every page source (checked before decoding or rendering), PDF text-layer boxes on the rendered ink for rotated
and cropped pages, one list of page suffixes for single-file and folder mode, JSON files named when broken."""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep.pages import read_page, read_pages
from data_prep.pdf import text_layer_words
from data_prep.rejects import PAGE_TOO_LARGE
from layoutlmv3 import page_sources
from layoutlmv3.data_roots import OutsideDataRoot, inside_root
from layoutlmv3.page_sources import PageTooLarge

# --------------------------------------------------------------------------------------------------------------
# Hand-made PDFs: a page per dict, text in Helvetica (PDFium's built-in base-14 font), placed in page space.


def write_pdf(path: Path, pages: list[dict]) -> None:
    """A minimal PDF: each page {"media": [l, b, r, t], "crop": [...]?, "rotate": int?, "words": [(x, y, text)]}."""
    objects = ["<</Type/Catalog/Pages 2 0 R>>", None, "<</Type/Font/Subtype/Type1/BaseFont/Helvetica>>"]
    kids = []
    for page in pages:
        content = "".join(f"BT /F1 24 Tf {x} {y} Td ({text}) Tj ET\n" for x, y, text in page.get("words", []))
        objects.append(f"<</Length {len(content)}>>stream\n{content}endstream")
        extra = (f"/CropBox[{' '.join(map(str, page['crop']))}]" if "crop" in page else "") + (
            f"/Rotate {page['rotate']}" if "rotate" in page else ""
        )
        objects.append(
            f"<</Type/Page/Parent 2 0 R/MediaBox[{' '.join(map(str, page['media']))}]{extra}"
            f"/Resources<</Font<</F1 3 0 R>>>>/Contents {len(objects)} 0 R>>"
        )
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<</Type/Pages/Kids[{' '.join(kids)}]/Count {len(kids)}>>"
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += f"trailer\n<</Size {len(objects) + 1}/Root 1 0 R>>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(bytes(out))


def ink(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L")) < 128


def covered(mask: np.ndarray, boxes: list[tuple[float, ...]], pad: int = 2) -> np.ndarray:
    inside = np.zeros_like(mask)
    for x0, y0, x1, y1 in boxes:
        inside[max(int(y0) - pad, 0) : int(y1) + pad + 1, max(int(x0) - pad, 0) : int(x1) + pad + 1] = True
    return inside


TEXT = [(40, 120, "Invoice"), (40, 60, "Total"), (170, 60, "99")]
PAGES = [
    {"media": [0, 0, 300, 200], "words": TEXT},  # the plain case, for reference
    *({"media": [0, 0, 300, 200], "rotate": turn, "words": TEXT} for turn in (90, 180, 270)),
    {"media": [100, 200, 400, 400], "words": [(x + 100, y + 200, text) for x, y, text in TEXT]},  # origin not 0,0
    {"media": [0, 0, 600, 400], "crop": [20, 30, 320, 230], "words": [*TEXT, (400, 300, "Outside")]},
    {"media": [0, 0, 600, 400], "crop": [20, 30, 320, 230], "rotate": 90, "words": TEXT},
    {"media": [10, 20, 310, 220], "crop": [-50, -50, 900, 900], "rotate": 270, "words": TEXT},  # crop past media
]


def test_text_layer_boxes_cover_the_rendered_ink_of_rotated_and_cropped_pages(tmp_path: Path) -> None:
    """Each word's box sits on ink, and the boxes together hold (nearly) all the ink of the page: with /Rotate
    or a CropBox/MediaBox away from 0,0 they used to land on blank paper."""
    write_pdf(tmp_path / "pages.pdf", PAGES)
    rendered = list(read_pages(tmp_path / "pages.pdf", 0, pdf_dpi=100))
    assert len(rendered) == len(PAGES)
    for number, image in rendered:
        assert isinstance(image, Image.Image), image
        mask = ink(image)
        assert mask.sum() > 100, f"page {number} rendered no text"
        words = text_layer_words(tmp_path / "pages.pdf", number, image.size)
        assert sorted(word.text for word in words) == ["99", "Invoice", "Total"], f"page {number}: {words}"
        for word in words:
            x0, y0, x1, y1 = word.box
            assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height, f"page {number}: {word}"
            box_ink = mask[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1].mean()
            assert box_ink > 0.05, f"page {number}: {word.text!r} box {word.box} covers no ink ({box_ink:.3f})"
        held = (mask & covered(mask, [word.box for word in words])).sum() / mask.sum()
        assert held > 0.97, f"page {number}: the word boxes hold only {held:.0%} of the page's ink"
    turned = [image for _, image in rendered]
    assert turned[1].size == (turned[0].height, turned[0].width)  # the rotation is in the rendered page


# --------------------------------------------------------------------------------------------------------------
# One pixel cap for every page source, checked before anything is decoded or rendered.


def test_a_tiny_pdf_with_a_huge_page_is_rejected_before_it_is_rendered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import data_prep.pdf

    write_pdf(tmp_path / "bomb.pdf", [{"media": [0, 0, 14400, 14400], "words": [(10, 10, "x")]}, PAGES[0]])
    assert (tmp_path / "bomb.pdf").stat().st_size < 1000
    rendered = []
    original = data_prep.pdf.render_within
    monkeypatch.setattr(data_prep.pdf, "render_within", lambda *args: rendered.append(1) or original(*args))
    started = time.monotonic()
    (first, bomb), (second, page) = read_pages(tmp_path / "bomb.pdf", 0, pdf_dpi=200)
    assert time.monotonic() - started < 5
    assert rendered == [1]  # only the normal page was rendered
    assert (first, bomb.reason) == (0, PAGE_TOO_LARGE)
    assert "14400x14400 pt" in bomb.detail and "40000x40000" in bomb.detail and "over the cap of 89.5 M" in bomb.detail
    assert second == 1 and isinstance(page, Image.Image)
    with pytest.raises(ValueError, match=r"bomb.pdf page 0: page_too_large: .*14400x14400 pt"):
        read_page(tmp_path / "bomb.pdf")  # the prediction tools' reader


def test_data_prep_rejects_the_huge_pdf_page_and_builds_the_others(tmp_path: Path) -> None:
    """Through build_shards: the huge page is a page_too_large reject (counted, detail naming size and cap); the
    rotated and cropped pages of the same run become samples from their text layer."""
    from data_prep.build_shards import BuildConfig, build
    from layoutlmv3.tokenizer import train_bpe

    (tmp_path / "in").mkdir()
    write_pdf(tmp_path / "in" / "bomb.pdf", [{"media": [0, 0, 5000, 14400], "words": [(10, 10, "x")]}, PAGES[1]])
    write_pdf(tmp_path / "in" / "pages.pdf", PAGES)
    train_bpe(["Invoice", "Total", "99", "x"] * 5, vocab_size=300).save_pretrained(tmp_path / "vocab")
    build(BuildConfig(tmp_path / "in", tmp_path / "out", "tesseract", tmp_path / "vocab", progress_bar=False))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["rejects"] == {PAGE_TOO_LARGE: 1} and manifest["total_samples"] == len(PAGES) + 1
    (reject,) = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert (reject["source"], reject["page"], reject["reason"]) == ("bomb.pdf", 0, PAGE_TOO_LARGE)
    assert "5000x14400 pt" in reject["detail"] and "over the cap of 89.5 M pixels" in reject["detail"]


def png_header(path: Path, width: int, height: int) -> None:
    """A PNG that promises width x height 8-bit grey pixels (and holds one row): a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def test_an_image_over_the_cap_is_refused_by_every_reader_naming_size_and_cap(tmp_path: Path) -> None:
    """12000 x 12000 is under twice Pillow's limit (it only warns); every page reader refuses it unread."""
    png_header(tmp_path / "big.png", 12000, 12000)
    ((page, rejected),) = list(read_pages(tmp_path / "big.png"))
    assert (page, rejected.reason) == (0, PAGE_TOO_LARGE)
    assert "12000x12000 page (144.0 M pixels) is over the cap of 89.5 M pixels" in rejected.detail
    with pytest.raises(ValueError, match=r"big.png page 0: page_too_large"):
        read_page(tmp_path / "big.png")
    from layoutlmv3.finetune.classes import page_words

    (tmp_path / "big.json").write_text('{"words": [{"text": "x", "box": [1, 1, 5, 5]}]}')
    with pytest.raises(PageTooLarge, match=r"big.png: a 12000x12000 page"):
        page_words(tmp_path / "big.png")  # classification and question answering
    from layoutlmv3.finetune.funsd import read_page as read_funsd_page

    (tmp_path / "big_form.json").write_text('{"form": []}')
    with pytest.raises(PageTooLarge, match=r"big.png: a 12000x12000 page"):
        read_funsd_page(tmp_path / "big_form.json", tmp_path / "big.png")
    png_header(tmp_path / "huge.png", 30000, 30000)  # Pillow's own refusal is turned into the same error
    with pytest.raises(PageTooLarge, match=r"huge.png: over the cap of 89.5 M pixels"):
        page_sources.open_image(tmp_path / "huge.png")


def test_each_frame_of_a_tiff_is_measured_not_only_the_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small, large = Image.new("L", (100, 100), 255), Image.new("L", (1000, 1000), 255)
    small.save(tmp_path / "pages.tif", save_all=True, append_images=[large, small])
    monkeypatch.setattr(page_sources, "MAX_PAGE_PIXELS", 500_000)
    pages = list(read_pages(tmp_path / "pages.tif"))
    assert [number for number, _ in pages] == [0, 1, 2]
    assert isinstance(pages[0][1], Image.Image) and isinstance(pages[2][1], Image.Image)
    assert pages[1][1].reason == PAGE_TOO_LARGE and "1000x1000 page" in pages[1][1].detail


# --------------------------------------------------------------------------------------------------------------
# Paths named in data files stay inside their data root.


def _class_root(tmp_path: Path) -> tuple[Path, Path]:
    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    (root / "pages").mkdir(parents=True)
    elsewhere.mkdir()
    for folder in (root / "pages", elsewhere):
        Image.new("L", (40, 40), 255).save(folder / "page.png")
    (root / "pages" / "page.json").write_text('{"words": [{"text": "Dear", "box": [1, 1, 9, 9]}]}')
    return root, elsewhere


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "link"])
def test_a_classification_index_line_leading_outside_the_root_is_refused(tmp_path: Path, kind: str) -> None:
    """Named with file and line, before any page is read or any words file written (outside or in the root)."""
    from data_prep.finetune_data import fill_missing_words
    from layoutlmv3.finetune.classes import class_names, listed_pages
    from layoutlmv3.finetune.config import FinetuneConfig

    root, elsewhere = _class_root(tmp_path)
    (root / "pages" / "link.png").symlink_to(elsewhere / "page.png")
    line = {"dotdot": "../elsewhere/page.png", "absolute": str(elsewhere / "page.png"), "link": "pages/link.png"}[kind]
    (root / "train.txt").write_text(f"pages/page.png letter\n{line} memo\n")
    (root / "test.txt").write_text("pages/page.png letter\n")
    before = sorted(path.name for path in elsewhere.iterdir())
    with pytest.raises(OutsideDataRoot, match=rf"train.txt:2: '{line}' .*(leads outside|absolute path)"):
        listed_pages(root / "train")
    with pytest.raises(OutsideDataRoot, match=r"train.txt:2"):
        class_names(root / "train")
    config = FinetuneConfig(task="classes")
    config.data.dir = str(root)
    with pytest.raises(OutsideDataRoot, match=r"train.txt:2"):
        fill_missing_words(config)  # would OCR the page and write page.json beside it
    assert sorted(path.name for path in elsewhere.iterdir()) == before
    assert not (root / "pages" / "link.json").exists()


@pytest.mark.parametrize("image", ["../elsewhere/page.png", "ABSOLUTE", "documents/link.png", "documents/../../x.png"])
def test_a_question_whose_image_leads_outside_the_split_is_refused(tmp_path: Path, image: str) -> None:
    from layoutlmv3.finetune.qa import question_images, read_questions

    split, elsewhere = tmp_path / "train", tmp_path / "elsewhere"
    (split / "documents").mkdir(parents=True)
    elsewhere.mkdir()
    Image.new("L", (40, 40), 255).save(elsewhere / "page.png")
    (split / "documents" / "link.png").symlink_to(elsewhere / "page.png")
    image = str(elsewhere / "page.png") if image == "ABSOLUTE" else image
    entries = [{"image": "documents/p.png", "question": "What?", "answers": ["x"]}, {"image": image, "question": "Q?"}]
    (split / "train.json").write_text(json.dumps({"data": entries}))
    for reader in (question_images, read_questions):
        with pytest.raises(OutsideDataRoot, match=r"train.json: question 1: .*(leads outside|absolute path)"):
            reader(split)
    assert sorted(path.name for path in elsewhere.iterdir()) == ["page.png"]


def test_paths_inside_the_root_pass_links_included(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "p.png").write_bytes(b"")
    (tmp_path / "b").symlink_to(tmp_path / "a")  # a link that stays inside
    assert inside_root(tmp_path, "b/p.png", "x") == tmp_path / "b" / "p.png"
    assert inside_root(tmp_path, "a/../a/p.png", "x") == tmp_path / "a" / ".." / "a" / "p.png"
    for bad in ("", None, 3, "a/\0"):
        with pytest.raises(OutsideDataRoot, match="x: "):
            inside_root(tmp_path, bad, "x")
    for root in (".", "a/..", "b/.."):  # b/.. is a/.. through the link: the root again
        with pytest.raises(OutsideDataRoot, match=r"x: .* names the data root .* itself, not a file in it"):
            inside_root(tmp_path, root, "x")


# --------------------------------------------------------------------------------------------------------------
# One list of page suffixes for single-file and folder mode; what a folder holds besides pages is listed.


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.png", "b.gif", "sub/c.bmp"):
        Image.new("RGB", (30, 30), "white").save(folder / name)
    (folder / "notes.xyz").write_text("not a page")
    (folder / "a.json").write_text('{"words": []}')  # a words file beside its page: not reported
    return folder


def test_folder_mode_reads_gif_and_bmp_pages_and_lists_what_it_skipped(tmp_path: Path, capsys) -> None:
    from launch.classify import page_images
    from launch.predict import build_parser, check_paths

    folder = _folder(tmp_path)
    assert [path.relative_to(folder).as_posix() for path in page_images(folder)] == ["a.png", "b.gif", "sub/c.bmp"]
    assert "skipped 1 file(s) of other types than pages: 1 .xyz (e.g. notes.xyz)" in capsys.readouterr().err
    args = build_parser().parse_args(["--model", "m", "--image", str(folder), "--out", str(tmp_path / "out")])
    assert check_paths(args) == ["a.png", "b.gif", "sub/c.bmp"]
    assert "1 .xyz (e.g. notes.xyz)" in capsys.readouterr().err
    for name in ("b.gif", "sub/c.bmp"):  # single-file mode reads the same files
        assert read_page(folder / name).size == (30, 30)


# --------------------------------------------------------------------------------------------------------------
# A JSON file from data that does not parse is named.


def test_broken_funsd_cord_and_docvqa_files_are_named(tmp_path: Path) -> None:
    from layoutlmv3.finetune.cord import cord_entity_types, read_cord_page
    from layoutlmv3.finetune.funsd import entity_types, read_split
    from layoutlmv3.finetune.qa import read_questions

    LABELS = ("O", "B-MENU.NM", "I-MENU.NM")
    (tmp_path / "funsd" / "annotations").mkdir(parents=True)
    (tmp_path / "funsd" / "images").mkdir()
    Image.new("L", (40, 40), 255).save(tmp_path / "funsd" / "images" / "f.png")
    broken = tmp_path / "funsd" / "annotations" / "f.json"
    for content, message in (('{"form": [', "is not valid JSON"), ('{"forms": []}', "expected a FUNSD annotation")):
        broken.write_text(content)
        for reader in (entity_types, read_split):
            with pytest.raises(ValueError, match=rf"{broken}.*{message}"):
                reader(tmp_path / "funsd")
    broken.write_text(
        json.dumps({"form": [{"id": 0, "label": "header", "words": [{"text": "A"}], "box": [1, 1, 5, 5]}]})
    )
    with pytest.raises(ValueError, match=rf"{broken}: entity 0 or one of its words has no \"box\""):
        read_split(tmp_path / "funsd")
    (tmp_path / "cord" / "json").mkdir(parents=True)
    (tmp_path / "cord" / "json" / "r.json").write_text("<html>502 Bad Gateway</html>")
    with pytest.raises(ValueError, match=r"r.json is not valid JSON \(it looks like an HTML page"):
        cord_entity_types(tmp_path / "cord")
    lines = [{"category": "menu.nm", "words": [{"text": "Tea", "quad": {"x1": "nan"}}]}]
    (tmp_path / "cord" / "json" / "r.json").write_text(json.dumps({"valid_line": lines}))
    with pytest.raises(ValueError, match=r"r.json: valid_line 0: a word without a quad of numbers"):
        read_cord_page(tmp_path / "cord" / "json" / "r.json", tmp_path / "funsd" / "images" / "f.png", "word", LABELS)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "train.json").write_text('{"data": [}')
    with pytest.raises(ValueError, match=r"train.json is not valid JSON"):
        read_questions(tmp_path / "train")


def test_data_prep_names_a_broken_ocr_json_in_the_reject(tmp_path: Path) -> None:
    from data_prep.ocr import make_ocr
    from data_prep.rejects import OCR_INVALID, PageRejected

    Image.new("L", (40, 40), 255).save(tmp_path / "p.png")
    (tmp_path / "p.json").write_text('{"pages": [')
    with pytest.raises(PageRejected) as raised:
        make_ocr("json", 10).read(tmp_path / "p.png", 0, Image.new("L", (40, 40)))
    assert raised.value.reason == OCR_INVALID and raised.value.detail.startswith("p.json is not valid JSON")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


# --------------------------------------------------------------------------------------------------------------
# Attacked as a hostile data root would: special files named like pages, files of absurdly many pages, odd PDF
# boxes, names no file can have.


def _within(seconds: float, call, fifos: list[Path]):
    """`call()`'s result or exception, failing the test (not hanging it) if it blocks: a reader stuck opening a
    FIFO is released by opening the FIFO's other end."""
    import threading

    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # handed to the test below
            outcome["error"] = error

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        for fifo in fifos:
            with contextlib.suppress(OSError):  # the blocked open returns (then reads EOF)
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(5)
        pytest.fail(f"{call} blocked for more than {seconds} s on a FIFO")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def test_a_fifo_or_folder_named_like_a_page_is_refused_unread_and_never_blocks(tmp_path: Path) -> None:
    """Opening a FIFO for reading waits for a writer for ever: every page reader (data prep, the prediction tools,
    fine-tuning) and data prep's OCR side files refuse it by its kind; a folder scan lists it (and a broken link)."""
    from data_prep.ocr import make_ocr
    from data_prep.pages import scan_folder
    from data_prep.rejects import OCR_INVALID, UNREADABLE_IMAGE, PageRejected
    from layoutlmv3.data_roots import NotARegularFile
    from layoutlmv3.finetune.classes import page_words

    fifos = [tmp_path / "z.png", tmp_path / "z.pdf", tmp_path / "p.json"]
    for fifo in fifos:
        os.mkfifo(fifo)
    (tmp_path / "x.png").mkdir()
    (tmp_path / "y.png").symlink_to(tmp_path / "gone.png")
    Image.new("L", (40, 40), 255).save(tmp_path / "p.png")
    (tmp_path / "z.json").write_text('{"words": []}')  # words beside the FIFO page: fine-tuning would open it

    for name in ("z.png", "z.pdf", "x.png"):
        ((page, rejected),) = _within(5, lambda name=name: list(read_pages(tmp_path / name)), fifos)
        assert (page, rejected.reason) == (0, UNREADABLE_IMAGE)
        assert f"{tmp_path / name} is a " in rejected.detail and "not a regular file" in rejected.detail
    with pytest.raises(ValueError, match=r"z.png page 0: unreadable_image: .*FIFO \(named pipe\), not a regular"):
        _within(5, lambda: read_page(tmp_path / "z.png"), fifos)  # predict.py / classify.py / answer.py
    with pytest.raises(NotARegularFile, match=r"z.png is a FIFO"):
        _within(5, lambda: page_words(tmp_path / "z.png"), fifos)  # classification and question answering
    with pytest.raises(PageRejected) as raised:  # data prep's --ocr json side file
        _within(5, lambda: make_ocr("json", 10).read(tmp_path / "p.png", 0, Image.new("L", (40, 40))), fifos)
    assert raised.value.reason == OCR_INVALID and "p.json is a FIFO" in raised.value.detail

    scan = scan_folder(tmp_path)
    assert scan.pages == ["p.png"]
    assert "4 (broken link or not a regular file)" in scan.skipped_note()  # y.png, z.png, z.pdf, p.json


def test_pages_past_the_per_file_cap_are_one_reject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 120 kB PDF can list one page 20000 times, a 2 MB TIFF hold 20000 frames: each would be a sample and an
    OCR run. Pages past MAX_PAGES_PER_FILE are one too_many_pages reject naming the count and the cap."""
    from data_prep.rejects import TOO_MANY_PAGES

    monkeypatch.setattr(page_sources, "MAX_PAGES_PER_FILE", 3)
    frames = [Image.new("L", (20, 20), 255) for _ in range(5)]
    frames[0].save(tmp_path / "many.tif", save_all=True, append_images=frames[1:])
    write_pdf(tmp_path / "many.pdf", [PAGES[0]] * 5)
    for name in ("many.tif", "many.pdf"):
        pages = list(read_pages(tmp_path / name, 0, pdf_dpi=50))
        assert [number for number, _ in pages] == [0, 1, 2, 3]
        assert all(isinstance(image, Image.Image) for _, image in pages[:3])
        assert pages[3][1].reason == TOO_MANY_PAGES
        assert "from 3 on are not read: over the cap of 3 pages per file" in pages[3][1].detail
        assert ("(it has 5)" in pages[3][1].detail) == name.endswith(".pdf")  # a TIFF's frames are not counted
        ((number, rejected),) = list(read_pages(tmp_path / name, 4, pdf_dpi=50))  # a resumed run, past the cap
        assert (number, rejected.reason) == (4, TOO_MANY_PAGES)
        with pytest.raises(ValueError, match=rf"{name} page 3: too_many_pages"):
            read_page(tmp_path / name, 3, pdf_dpi=50)  # predict.py's page N


def many_frame_tiff(path: Path, frames: int, size: int = 8) -> None:
    """A TIFF of `frames` blank 8-bit grey frames sharing one strip: ~100 bytes a frame."""
    strip = bytes(size * size)
    out = bytearray(b"II*\x00" + struct.pack("<I", 8 + len(strip)) + strip)
    tags = [(256, 3, size), (257, 3, size), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8), (278, 3, size)]
    tags.append((279, 4, len(strip)))
    for number in range(frames):
        directory = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in tags)
        following = 0 if number == frames - 1 else len(out) + len(directory) + 4
        out += directory + struct.pack("<I", following)
    path.write_bytes(bytes(out))


def test_a_tiff_of_very_many_frames_is_read_up_to_the_cap_without_walking_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow's n_frames walks every page directory in quadratic time (100000 frames, a 10 MB file: 160 s; 1 M:
    hours) before a page was read. Frames are read in turn and reading stops at the cap."""
    from PIL import TiffImagePlugin

    from data_prep.rejects import TOO_MANY_PAGES

    many_frame_tiff(tmp_path / "many.tif", 3000)
    monkeypatch.setattr(page_sources, "MAX_PAGES_PER_FILE", 3)
    seeks = []
    original = TiffImagePlugin.TiffImageFile._seek
    monkeypatch.setattr(
        TiffImagePlugin.TiffImageFile, "_seek", lambda self, frame: seeks.append(frame) or original(self, frame)
    )
    pages = list(read_pages(tmp_path / "many.tif"))
    assert [number for number, _ in pages] == [0, 1, 2, 3] and pages[3][1].reason == TOO_MANY_PAGES
    assert max(seeks) <= 3, f"{len(seeks)} page directories visited for 4 pages"


ODD_PAGES = [  # all survive: PDFium normalises these, and the boxes follow what it renders
    {"media": [0, 0, 300, 200], "rotate": 45, "words": TEXT},  # not a multiple of 90: PDFium shows it unturned
    {"media": [0, 0, 300, 200], "rotate": -90, "words": TEXT},  # = 270
    {"media": [0, 0, 300, 200], "rotate": 450, "words": TEXT},  # = 90
    {"media": [300, 200, 0, 0], "words": TEXT},  # an inverted MediaBox
    {"media": [0, 0, 300, 200], "crop": [300, 200, 0, 0], "words": TEXT},  # an inverted CropBox
    {"media": [-1e6, -1e6, -999700, -999800], "words": [(x - 1e6, y - 1e6, text) for x, y, text in TEXT]},
]


def test_odd_rotations_and_inverted_boxes_keep_the_words_on_their_ink(tmp_path: Path) -> None:
    write_pdf(tmp_path / "odd.pdf", ODD_PAGES)
    for number, image in read_pages(tmp_path / "odd.pdf", 0, pdf_dpi=100):
        mask = ink(image)
        words = text_layer_words(tmp_path / "odd.pdf", number, image.size)
        assert sorted(word.text for word in words) == ["99", "Invoice", "Total"], f"page {number}: {words}"
        held = (mask & covered(mask, [word.box for word in words])).sum() / mask.sum()
        assert held > 0.97, f"page {number}: the word boxes hold only {held:.0%} of the page's ink"


def test_a_pdf_page_with_nothing_shown_is_unreadable_not_too_large(tmp_path: Path) -> None:
    """A CropBox wholly outside the MediaBox shows nothing (0x0 pt): a damaged page, not a decompression bomb."""
    from data_prep.rejects import UNREADABLE_PAGE

    write_pdf(tmp_path / "empty.pdf", [{"media": [0, 0, 300, 200], "crop": [1000, 1000, 1300, 1200]}, PAGES[0]])
    (first, rejected), (second, page) = read_pages(tmp_path / "empty.pdf", 0, pdf_dpi=50)
    assert (first, rejected.reason) == (0, UNREADABLE_PAGE) and "a 0x0 page has no area" in rejected.detail
    assert second == 1 and isinstance(page, Image.Image)


@pytest.mark.parametrize("name", ["\ud800.png", "pages/\udfff"])
def test_a_path_no_file_can_have_is_refused_naming_the_entry(tmp_path: Path, name: str) -> None:
    """JSON may hold a lone surrogate ("\\ud800"): refused as a path, naming the question, not a UnicodeEncodeError."""
    from layoutlmv3.finetune.qa import read_questions

    (tmp_path / "train").mkdir()
    entries = [{"image": name, "question": "What?"}]
    (tmp_path / "train" / "train.json").write_text(json.dumps({"data": entries}))
    with pytest.raises(OutsideDataRoot, match=r"train.json: question 0: the path .* cannot be a file name here"):
        read_questions(tmp_path / "train")


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n0 0 moveto 16 16 lineto stroke showpage\n"


def test_a_page_that_is_really_postscript_never_reaches_ghostscript(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow picks its decoder by content: an EPS named page.png was opened as EPS, whose load runs Ghostscript on
    the file (a code-execution surface). Pages and shard images are read by the page decoders only."""
    from PIL import EpsImagePlugin

    from data_prep.rejects import UNREADABLE_IMAGE
    from layoutlmv3.data.decode import decode_png

    ran = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: ran.append(args) or 1 / 0)
    (tmp_path / "page.png").write_bytes(EPS)
    ((page, rejected),) = list(read_pages(tmp_path / "page.png"))
    assert (page, rejected.reason) == (0, UNREADABLE_IMAGE) and "cannot identify image file" in rejected.detail
    with pytest.raises(ValueError, match=r"page.png page 0: unreadable_image"):
        read_page(tmp_path / "page.png")  # predict.py / classify.py / answer.py
    with pytest.raises(OSError, match="cannot identify image file"):
        page_sources.open_image(io.BytesIO(EPS))  # image-tokenizer pages from shards
    with pytest.raises(OSError, match="cannot identify image file"):
        decode_png(EPS, 16)  # pretraining's shard images
    assert ran == []
    Image.new("L", (16, 16), 255).save(tmp_path / "real.png")
    with page_sources.open_image(tmp_path / "real.png") as real:  # the page formats still open
        assert real.format == "PNG"


def test_a_words_file_planted_as_a_link_out_of_the_root_is_refused(tmp_path: Path) -> None:
    """The page is inside the root but its words file page.json is a link to a file elsewhere: that file was read
    as the page's words. Refused naming the index line / question, like a link planted for the page."""
    from layoutlmv3.finetune.classes import listed_pages, read_class_split
    from layoutlmv3.finetune.qa import read_questions

    root, elsewhere = _class_root(tmp_path)
    (elsewhere / "secret.json").write_text('{"words": [{"text": "SECRET", "box": [1, 1, 9, 9]}]}')
    (root / "pages" / "page.json").unlink()
    (root / "pages" / "page.json").symlink_to(elsewhere / "secret.json")
    (root / "train.txt").write_text("pages/page.png letter\n")
    with pytest.raises(OutsideDataRoot, match=r"train.txt:1: 'page.json' beside 'pages/page.png' leads outside"):
        read_class_split(root / "train", ["letter"])
    (root / "pages" / "page.json").unlink()
    (root / "pages" / "page.json").symlink_to(elsewhere / "never-written.json")  # dangling: OCR would fill it
    with pytest.raises(OutsideDataRoot, match=r"train.txt:1: 'page.json' beside"):
        listed_pages(root / "train")
    (root / "pages" / "page.json").unlink()
    (root / "pages" / "page.json").symlink_to(root / "pages" / "real.json")  # a link that stays inside is fine
    assert listed_pages(root / "train") == [(root / "pages" / "page.png", "letter")]

    (root / "pages" / "page.json").unlink()
    (root / "pages" / "page.json").symlink_to(elsewhere / "secret.json")
    (root / "pages" / "pages.json").write_text(json.dumps({"data": [{"image": "page.png", "question": "Who?"}]}))
    with pytest.raises(OutsideDataRoot, match=r"pages.json: question 0: 'page.json' beside 'page.png' leads outside"):
        read_questions(root / "pages")


def test_fine_tuning_ocr_of_pages_without_words_opens_them_as_every_page_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """launch/finetune.py OCRs the pages of a class folder that have no words file: a FIFO there blocked it for
    ever, a 12000x12000 page was decoded (144 M pixels) and handed to Tesseract. Both refused by name, unread."""
    import data_prep.page_words
    from data_prep.finetune_data import fill_missing_words
    from layoutlmv3.data_roots import NotARegularFile
    from layoutlmv3.finetune.config import FinetuneConfig

    ocr_runs = []
    monkeypatch.setattr(data_prep.page_words, "ocr_words", lambda image: ocr_runs.append(image.size) or [])
    for split in ("train", "test"):
        (tmp_path / split / "letter").mkdir(parents=True)
        Image.new("L", (40, 40), 255).save(tmp_path / split / "letter" / "page.png")
        (tmp_path / split / "letter" / "page.json").write_text('{"words": []}')
    config = FinetuneConfig(task="classes")
    config.data.dir = str(tmp_path)
    fifo = tmp_path / "train" / "letter" / "z.png"
    os.mkfifo(fifo)
    with pytest.raises(NotARegularFile, match=r"z.png is a FIFO"):
        _within(5, lambda: fill_missing_words(config), [fifo])
    fifo.unlink()
    png_header(tmp_path / "train" / "letter" / "big.png", 12000, 12000)
    with pytest.raises(PageTooLarge, match=r"big.png: a 12000x12000 page"):
        fill_missing_words(config)
    assert ocr_runs == []


def test_an_index_file_that_is_not_utf8_is_named_with_its_line(tmp_path: Path) -> None:
    from layoutlmv3.finetune.classes import listed_pages

    (tmp_path / "train.txt").write_bytes(b"pages/a.png letter\r\npages/\xff.png memo\n")
    with pytest.raises(ValueError, match=r"train.txt:2: not UTF-8 text \(invalid start byte at byte 26\)"):
        listed_pages(tmp_path / "train")
    (tmp_path / "train.txt").write_bytes(b"pages/a.png letter\r\n  pages/b c.png  memo  \r\n")  # CRLF, spaces
    assert listed_pages(tmp_path / "train") == [
        (tmp_path / "pages/a.png", "letter"),
        (tmp_path / "pages/b c.png", "memo"),
    ]


def strokes_pdf(path: Path, strokes: int) -> None:
    """A page of `strokes` full-page lines in one Flate content stream (10 kB for 200000), then a plain page."""
    content = zlib.compress(b"10 10 m 190 190 l S\n" * strokes, 9)
    pages = [(b"<</Length %d/Filter/FlateDecode>>" % len(content), content), (b"<</Length 0>>", b"")]
    objects = [b"<</Type/Catalog/Pages 2 0 R>>", b"<</Type/Pages/Kids[3 0 R 5 0 R]/Count 2>>"]
    for number, (head, body) in enumerate(pages):
        objects.append(b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]/Contents %d 0 R>>" % (4 + 2 * number))
        objects.append(head + b"stream\n" + body + b"\nendstream")
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<</Size %d/Root 1 0 R>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))


def test_a_pdf_page_that_takes_too_long_to_draw_is_abandoned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 49 kB PDF of 1 M strokes took PDFium 97 s to render (unbounded: 10 MB, hours). Rendering is progressive
    with a deadline: past it the page is a render_timeout reject and the file's next page is rendered."""
    import pypdfium2

    import data_prep.pdf
    from data_prep.rejects import RENDER_TIMEOUT

    strokes_pdf(tmp_path / "slow.pdf", 200_000)
    assert (tmp_path / "slow.pdf").stat().st_size < 20_000
    monkeypatch.setattr(data_prep.pdf, "RENDER_SECONDS", 0.3)
    started = time.monotonic()
    (first, rejected), (second, page) = read_pages(tmp_path / "slow.pdf", 0, pdf_dpi=200)
    assert time.monotonic() - started < 10
    assert (first, rejected.reason) == (
        0,
        RENDER_TIMEOUT,
    ) and "PDF page 0: drawing it took over 0.3 s" in rejected.detail
    assert second == 1 and isinstance(page, Image.Image) and page.size == (556, 556)

    write_pdf(tmp_path / "pages.pdf", PAGES)  # the deadline render draws what PDFium's plain render draws
    document = pypdfium2.PdfDocument(tmp_path / "pages.pdf")
    try:
        for number in (0, 6, 7):
            expected = document[number].render(scale=100 / 72).to_pil()
            drawn = data_prep.pdf.render_within(document[number], 100 / 72, 60, "x")
            assert drawn.size == expected.size and drawn.tobytes() == expected.tobytes()
    finally:
        document.close()


def test_a_file_name_that_is_not_utf8_is_listed_as_skipped_not_a_crash(tmp_path: Path, caplog) -> None:
    """A Latin-1 'café.png' from an old archive: data prep wrote its name into UTF-8 JSON records and died with a
    UnicodeEncodeError traceback at the end of the chunk. The scan lists it as skipped; the other pages build."""
    from data_prep.build_shards import BuildConfig, build
    from data_prep.pages import scan_folder
    from layoutlmv3.tokenizer import train_bpe

    (tmp_path / "in").mkdir()
    words = '{"pages": [{"page": 0, "words": [{"text": "Invoice", "box": [1, 1, 30, 20], "line": 0}]}]}'
    for name in ("ok", "caf\udce9"):  # the second: the byte 0xe9 as Python names it
        Image.new("L", (60, 40), 255).save(os.fsencode(tmp_path / "in" / f"{name}.png"))
        (tmp_path / "in" / f"{name}.json").write_text(words)
    scan = scan_folder(tmp_path / "in")
    assert scan.pages == ["ok.png"]
    assert (
        scan.skipped_note()
        == "skipped 1 file(s) of other types than pages: 1 (file name not UTF-8) (e.g. caf\\xe9.png)"
    )
    train_bpe(["Invoice"] * 5, vocab_size=300).save_pretrained(tmp_path / "vocab")
    build(BuildConfig(tmp_path / "in", tmp_path / "out", "json", tmp_path / "vocab", progress_bar=False))
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["total_samples"] == 1
    assert "(file name not UTF-8): 1" in caplog.text


def test_json_files_from_data_that_are_fifos_are_refused_without_blocking(tmp_path: Path) -> None:
    """FUNSD annotations, CORD receipts, words files and every other JSON read from data go through
    json_files.read_json_file: a FIFO there is refused by its kind."""
    from layoutlmv3.finetune.funsd import read_split
    from layoutlmv3.json_files import JsonFileError, read_json_file

    (tmp_path / "annotations").mkdir()
    (tmp_path / "images").mkdir()
    fifo = tmp_path / "annotations" / "f.json"
    os.mkfifo(fifo)
    Image.new("L", (40, 40), 255).save(tmp_path / "images" / "f.png")
    with pytest.raises(JsonFileError, match=r"f.json is a FIFO \(named pipe\), not a regular file"):
        _within(5, lambda: read_split(tmp_path), [fifo])
    with pytest.raises(JsonFileError, match=r"annotations is a folder, not a regular file: refused unread, expected"):
        read_json_file(tmp_path / "annotations")


def test_an_annotation_is_paired_with_the_image_of_exactly_its_name(tmp_path: Path) -> None:
    """FUNSD/CORD pair annotation NAME.json with images/NAME.*: the name was a glob pattern, so 'a[1]' took a1.png
    and 'b' took b.notes.txt (sorted first) -- a wrong page without a word."""
    from layoutlmv3.finetune.funsd import image_for

    for name in ("a[1].png", "a1.png", "b.notes.txt", "b.png", "c.json", "c.tif", "*.png"):
        (tmp_path / name).write_bytes(b"")
    assert image_for(tmp_path, "a[1]").name == "a[1].png"
    assert image_for(tmp_path, "b").name == "b.png"
    assert image_for(tmp_path, "c").name == "c.tif"
    assert image_for(tmp_path, "*").name == "*.png"
    with pytest.raises(FileNotFoundError, match="no image for annotation b.notes"):
        image_for(tmp_path, "b.notes")


def test_hidden_files_in_class_funsd_and_cord_folders_are_not_pages(tmp_path: Path) -> None:
    """A dataset copied from a Mac holds ._page.png / ._f.json (AppleDouble, binary): data prep skipped hidden
    files, fine-tuning read them as pages and annotations and stopped on them."""
    from layoutlmv3.finetune.classes import listed_pages
    from layoutlmv3.finetune.funsd import _annotations

    (tmp_path / "train" / "letter").mkdir(parents=True)
    (tmp_path / "annotations").mkdir()
    for name in ("train/letter/page.png", "train/letter/._page.png", "annotations/f.json", "annotations/._f.json"):
        (tmp_path / name).write_bytes(b"\x00\x05\x16\x07")
    assert listed_pages(tmp_path / "train") == [(tmp_path / "train" / "letter" / "page.png", "letter")]
    assert _annotations(tmp_path) == [tmp_path / "annotations" / "f.json"]
