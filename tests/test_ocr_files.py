"""OCR given as hOCR or ALTO XML (`--ocr hocr` / `--ocr alto`), on files the real Tesseract writes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from data_prep.build_shards import BuildConfig, build
from data_prep.ocr import Word, make_ocr, parse_tsv, run_tesseract
from data_prep.ocr_files import parse_alto, parse_hocr
from data_prep.ocr_settings import OcrSettings
from data_prep.rejects import OCR_INVALID, OCR_MISSING, PageRejected
from data_prep.synth import write_corpus
from layoutlmv3.tokenizer import train_bpe
from tests.file_digests import digests

needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None, reason="needs tesseract-ocr")


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two synthetic form pages as PNG, each with the hOCR and ALTO files Tesseract writes for it."""
    root = tmp_path_factory.mktemp("ocr_files")
    write_corpus(root / "synth", 2, seed=3)
    images = root / "images"
    images.mkdir()
    for source in sorted((root / "synth" / "images").glob("*.png")):
        target = images / source.name
        shutil.copy(source, target)
        if shutil.which("tesseract"):
            for kind in ("hocr", "alto"):
                subprocess.run(["tesseract", str(target), str(target.with_suffix("")), kind], check=True,
                               capture_output=True, env={"OMP_THREAD_LIMIT": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip
    return images


@needs_tesseract
def test_hocr_and_alto_from_tesseract_give_its_words_boxes_and_lines(pages: Path) -> None:
    for image_path in sorted(pages.glob("*.png")):
        image = Image.open(image_path)
        expected = parse_tsv(run_tesseract(image, timeout=120))
        assert len(expected) > 20 and len({w.line for w in expected}) > 5
        for kind in ("hocr", "alto"):
            got = make_ocr(kind, timeout=1).read(image_path, 0, image)
            assert got == expected, kind


@needs_tesseract
def test_build_shards_from_hocr_and_alto_equals_running_tesseract(pages: Path, tmp_path: Path) -> None:
    """The shards are byte-identical whichever way the same Tesseract words arrive (the hOCR and ALTO files are the
    command's own output, so --ocr tesseract reads as plainly: its own settings, the page at its resolution); a
    broken file is rejected."""
    words = [word.text for path in pages.glob("*.png") for word in parse_tsv(run_tesseract(Image.open(path), 120))]
    train_bpe(words, vocab_size=400).save_pretrained(tmp_path / "vocab")
    broken = pages.parent / "broken"
    broken.mkdir()
    for name in ("ok", "bad"):
        shutil.copy(sorted(pages.glob("*.png"))[0], broken / f"{name}.png")
    shutil.copy(sorted(pages.glob("*.hocr"))[0], broken / "ok.hocr")
    shutil.copy(sorted(pages.glob("*.xml"))[0], broken / "ok.xml")
    (broken / "bad.hocr").write_text("<html><body><p>no page here</p></body></html>")
    (broken / "bad.xml").write_text("<alto><Layout><Page WIDTH='10'")  # truncated

    def shards(kind: str, source: Path) -> tuple[dict[str, str], dict]:
        out = tmp_path / f"{kind}-{source.name}"
        plain = OcrSettings(invert=True, min_dpi=0, max_dpi=0)  # as `tesseract page.png out hocr` reads
        settings = plain if kind == "tesseract" else OcrSettings()
        build(BuildConfig(source, out, kind, tmp_path / "vocab", progress_bar=False, ocr_settings=settings))
        manifest = json.loads((out / "manifest.json").read_text())
        return digests(out.glob("*.tar"), out), manifest

    reference, _ = shards("tesseract", pages)
    for kind in ("hocr", "alto"):
        got, manifest = shards(kind, pages)
        assert got == reference, kind
        _, manifest = shards(kind, broken)
        assert manifest["total_samples"] == 1 and manifest["rejects"] == {OCR_INVALID: 1}, manifest
        reject = json.loads((tmp_path / f"{kind}-broken" / "rejects.jsonl").read_text().splitlines()[0])
        assert reject["source"].endswith("bad.png") and reject["reason"] == OCR_INVALID


def test_boxes_are_scaled_to_the_image_when_the_file_measures_otherwise() -> None:
    image = Image.new("L", (500, 400), 255)
    hocr = (
        "<html><body><div class='ocr_page' title='image x; bbox 0 0 1000 800'>"
        "<span class='ocr_line' title='bbox 100 100 400 140'>"
        "<span class='ocrx_word' title='bbox 100 100 200 140; x_wconf 90'>Total</span> "
        "<span class='ocrx_word' title='bbox 220 100 400 140'><strong>12.50</strong></span></span>"
        "</div></body></html>"
    )
    (page,) = parse_hocr(hocr)
    assert page.in_pixels_of(image) == [
        Word("Total", (50.0, 50.0, 100.0, 70.0), 0),
        Word("12.50", (110.0, 50.0, 200.0, 70.0), 0),
    ]
    alto = b"""<?xml version="1.0"?>
    <alto xmlns="http://www.loc.gov/standards/alto/ns-v4#"><Description><MeasurementUnit>mm10</MeasurementUnit>
    </Description><Layout><Page WIDTH="2000" HEIGHT="1600" PHYSICAL_IMG_NR="1"><PrintSpace>
    <TextBlock><TextLine><String CONTENT="Date" HPOS="200" VPOS="400" WIDTH="200" HEIGHT="80"/><SP/>
    <String CONTENT="1998" HPOS="500" VPOS="400" WIDTH="300" HEIGHT="80"/></TextLine>
    <TextLine><String CONTENT="Signed" HPOS="200" VPOS="600" WIDTH="400" HEIGHT="80"/></TextLine></TextBlock>
    </PrintSpace></Page></Layout></alto>"""
    (page,) = parse_alto(alto)
    assert page.in_pixels_of(image) == [
        Word("Date", (50.0, 100.0, 100.0, 120.0), 0),
        Word("1998", (125.0, 100.0, 200.0, 120.0), 0),
        Word("Signed", (50.0, 150.0, 150.0, 170.0), 1),
    ]


@pytest.mark.parametrize(
    ("parse", "document", "reason"),
    [
        (parse_hocr, "<html><body><span class='ocrx_word' title='bbox 1 2 3 4'>x</span></body></html>", "ocr_page"),
        (
            parse_hocr,
            "<div class='ocr_page'><span class='ocrx_word' title='x_wconf 3'>x</span></div>",
            "without a bbox",
        ),
        (parse_alto, b"<html/>", "not <alto>"),
        (parse_alto, b"<alto><Layout/></alto>", "no Page"),
        (
            parse_alto,
            b"<alto><Layout><Page><TextLine><String CONTENT='a' HPOS='x'/></TextLine></Page></Layout></alto>",
            "without numeric",
        ),  # fmt: skip
        (
            parse_alto,
            b"<alto><Description><MeasurementUnit>mm10</MeasurementUnit></Description><Layout><Page/></Layout></alto>",
            "cannot convert to pixels",
        ),  # fmt: skip
    ],
)
def test_malformed_files_are_refused_with_a_reason(parse, document, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse(document)


def test_missing_files_and_pages_are_rejected(tmp_path: Path) -> None:
    image_path = tmp_path / "scan.png"
    image = Image.new("L", (100, 100), 255)
    image.save(image_path)
    for kind in ("hocr", "alto"):
        with pytest.raises(PageRejected) as missing:
            make_ocr(kind, timeout=1).read(image_path, 0, image)
        assert missing.value.reason == OCR_MISSING
    (tmp_path / "scan.hocr").write_text("<div class='ocr_page' title='bbox 0 0 100 100'></div>")
    with pytest.raises(PageRejected, match="has 1 page") as second:
        make_ocr("hocr", timeout=1).read(image_path, 1, image)
    assert second.value.reason == OCR_MISSING
