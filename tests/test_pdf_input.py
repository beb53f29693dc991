"""PDF input to data_prep.build_shards: rendered pages, text-layer words, OCR for scans, rejects for bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib
import pytest
from PIL import Image

matplotlib.use("Agg")
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from data_prep.build_shards import BuildConfig, build  # noqa: E402
from data_prep.ocr import make_ocr, parse_tsv, run_tesseract  # noqa: E402
from data_prep.pages import read_pages  # noqa: E402
from data_prep.pdf import text_layer_words  # noqa: E402
from data_prep.rejects import UNREADABLE_IMAGE  # noqa: E402
from layoutlmv3.tokenizer import train_bpe  # noqa: E402

needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None, reason="needs tesseract-ocr")
PAGES = [["Invoice number: 12345", "Total amount due 99.50"], ["Shipping address", "Harbour Street 7"]]
ENCRYPTED = (  # a PDF whose Standard security handler refuses the empty password
    b"%PDF-1.4\n1 0 obj <</Type/Catalog/Pages 2 0 R>> endobj\n2 0 obj <</Type/Pages/Kids[3 0 R]/Count 1>> endobj\n"
    b"3 0 obj <</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>> endobj\n4 0 obj <</Filter/Standard/V 1/R 2/O<"
    + b"ab" * 32
    + b">/U<"
    + b"cd" * 32
    + b">/P -4>> endobj\ntrailer <</Root 1 0 R/Size 5/Encrypt 4 0 R"
    b"/ID[<00112233445566778899aabbccddeeff><00112233445566778899aabbccddeeff>]>>\n%%EOF\n"
)


def text_pdf(path: Path) -> None:
    """Two letter-size pages whose text is real PDF text (a text layer), in embedded TrueType."""
    matplotlib.rcParams["pdf.fonttype"] = 42
    with PdfPages(path) as pdf:
        for lines in PAGES:
            figure = Figure(figsize=(8.5, 11))
            for row, line in enumerate(lines):
                figure.text(0.1, 0.9 - 0.1 * row, line, fontsize=16)
            pdf.savefig(figure)


@pytest.fixture(scope="module")
def pdfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pdfs")
    text_pdf(root / "digital.pdf")
    _, first = next(read_pages(root / "digital.pdf", 0, pdf_dpi=150))
    first.save(root / "scanned.pdf", resolution=150)  # image only: no text layer
    return root


def iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_pages_render_at_the_set_resolution(pdfs: Path) -> None:
    pages = list(read_pages(pdfs / "digital.pdf", 0, pdf_dpi=100))
    assert [number for number, _ in pages] == [0, 1]
    assert all(image.size == (850, 1100) and image.info["dpi"] == (100, 100) for _, image in pages)
    assert [number for number, _ in read_pages(pdfs / "digital.pdf", 1, pdf_dpi=100)] == [1]


@needs_tesseract
def test_text_layer_words_sit_where_ocr_sees_them(pdfs: Path) -> None:
    for number, image in read_pages(pdfs / "digital.pdf", 0, pdf_dpi=150):
        words = text_layer_words(pdfs / "digital.pdf", number, image.size)
        assert [w.text for w in words] == " ".join(PAGES[number]).split()
        assert [w.line for w in words] == [i for i, line in enumerate(PAGES[number]) for _ in line.split()]
        seen = {w.text: w.box for w in parse_tsv(run_tesseract(image, timeout=120))}
        matched = [iou(w.box, seen[w.text]) for w in words if w.text in seen]
        assert len(matched) >= len(words) - 1 and min(matched) > 0.5, (words, seen)


@needs_tesseract
def test_a_scanned_pdf_gets_ocr_and_a_digital_one_needs_none(pdfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ocr = make_ocr("tesseract", timeout=120)
    _, scan = next(read_pages(pdfs / "scanned.pdf", 0, pdf_dpi=150))
    assert text_layer_words(pdfs / "scanned.pdf", 0, scan.size) == []
    assert {"Invoice", "12345", "Total"} <= {w.text for w in ocr.read(pdfs / "scanned.pdf", 0, scan)}

    def no_tesseract(*args, **kwargs):
        raise AssertionError("a page with a text layer must not be OCRed")

    monkeypatch.setattr("data_prep.ocr.run_tesseract", no_tesseract)
    _, page = next(read_pages(pdfs / "digital.pdf", 0, pdf_dpi=150))
    assert [w.text for w in ocr.read(pdfs / "digital.pdf", 0, page)][:3] == ["Invoice", "number:", "12345"]


@needs_tesseract
def test_build_shards_takes_pdfs_and_rejects_encrypted_and_broken_ones(pdfs: Path, tmp_path: Path) -> None:
    source = tmp_path / "input"
    source.mkdir()
    for name in ("digital.pdf", "scanned.pdf"):
        shutil.copy(pdfs / name, source / name)
    (source / "locked.pdf").write_bytes(ENCRYPTED)
    (source / "broken.pdf").write_bytes((pdfs / "digital.pdf").read_bytes()[:300])
    train_bpe(" ".join(" ".join(p) for p in PAGES).split() * 3, vocab_size=300).save_pretrained(tmp_path / "vocab")
    build(BuildConfig(source, tmp_path / "shards", "tesseract", tmp_path / "vocab", progress_bar=False, pdf_dpi=150))
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["total_samples"] == 3  # 2 digital pages + 1 scanned
    assert manifest["rejects"] == {UNREADABLE_IMAGE: 2}
    rejects = [json.loads(line) for line in (tmp_path / "shards" / "rejects.jsonl").read_text().splitlines()]
    reasons = {r["source"]: r["detail"] for r in rejects}
    assert set(reasons) == {"locked.pdf", "broken.pdf"}
    assert "encrypted" in reasons["locked.pdf"] and "Data format error" in reasons["broken.pdf"]


def test_the_pdf_helpers_leave_images_alone(tmp_path: Path) -> None:
    Image.new("L", (40, 30), 255).save(tmp_path / "plain.png")
    ((number, image),) = list(read_pages(tmp_path / "plain.png"))
    assert number == 0 and image.size == (40, 30)
