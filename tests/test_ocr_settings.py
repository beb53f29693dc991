"""OcrSettings (data_prep/ocr_settings.py): what it accepts, a page's resolution, and pages resampled for Tesseract
whose words come back in the page's own pixels."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from data_prep.ocr import TesseractOcr, Word
from data_prep.ocr_settings import OcrSettings, boxes_to_page, page_dpi, prepare_page
from data_prep.pages import read_pages

needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract is not installed")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"psm": 7}, "psm must be one of"),  # a single text line: not a page
        ({"psm": 0}, "psm must be one of"),  # orientation only: no words
        ({"min_dpi": 300, "max_dpi": 200}, r"min_dpi \(300\) is above max_dpi \(200\)"),
        ({"min_dpi": True}, "min_dpi must be 0"),  # a bool is an int to Python, never a resolution here
        ({"max_dpi": 200.0}, "max_dpi must be 0"),
        ({"min_dpi": 49}, "min_dpi must be 0 .off. or between 50 and 1200"),
        ({"max_dpi": 1201}, "max_dpi must be 0 .off. or between 50 and 1200"),
        ({"min_dpi": -1}, "min_dpi must be 0"),
    ],
)
def test_settings_out_of_range_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OcrSettings(**fields)


def test_settings_in_range_are_kept_and_recorded() -> None:
    settings = OcrSettings(psm=11, invert=False, min_dpi=50, max_dpi=1200)
    assert settings.as_record() == {"psm": 11, "invert": False, "min_dpi": 50, "max_dpi": 1200}
    assert settings.tesseract_variables() == {"tessedit_do_invert": "0"}
    assert OcrSettings(min_dpi=200, max_dpi=200).min_dpi == 200  # one resolution for every page
    assert OcrSettings(invert=True).tesseract_variables() == {}  # Tesseract's own behaviour: nothing set


def test_page_dpi_recorded_estimated_or_implausible() -> None:
    page = Image.new("L", (850, 1100), 255)  # a letter page at 100 dpi
    assert page_dpi(page) == pytest.approx(100.0)  # nothing recorded: estimated from the long side, 11 in
    page.info["dpi"] = (300, 300)
    assert page_dpi(page) == 300.0  # recorded: believed
    page.info["dpi"] = (1, 1)  # what some writers put when they know nothing
    assert page_dpi(page) == pytest.approx(100.0)
    page.info["dpi"] = ("junk",)
    assert page_dpi(page) == pytest.approx(100.0)


def _page_with_word(size: tuple[int, int], font_size: int, mode: str = "L") -> tuple[Image.Image, tuple[int, ...]]:
    """A white page with one dark word; returns it and the word's ink box."""
    page = Image.new(mode, size, 255 if mode == "L" else 1)
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=font_size)
    origin = (size[0] // 5, size[1] // 3)
    draw.text(origin, "INVOICE", font=font, fill=0)
    return page, draw.textbbox(origin, "INVOICE", font=font)


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    width, height = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(width, 0) * max(height, 0)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


def test_boxes_to_page_maps_and_clamps() -> None:
    words = [Word("a", (300, 600, 603, 900), 0), Word("b", (2540, 3290, 2600, 3400), 1)]
    mapped = boxes_to_page(words, (2550, 3300), (850, 1100))
    assert [word.box for word in mapped] == [(100, 200, 201, 300), (847, 1097, 850, 1100)]
    assert [word.text for word in mapped] == ["a", "b"] and mapped[1].line == 1
    assert boxes_to_page(words, (850, 1100), (850, 1100)) is words


@needs_tesseract
def test_a_100_dpi_page_upscaled_to_300_gives_boxes_in_its_own_pixels() -> None:
    page, ink = _page_with_word((500, 250), 24)
    page.info["dpi"] = (100, 100)
    seen = prepare_page(page, OcrSettings(min_dpi=300, max_dpi=0))
    assert seen.size == (1500, 750) and seen.info["dpi"] == (300, 300)
    assert prepare_page(page, OcrSettings(min_dpi=0, max_dpi=0)) is page  # no bound: read as it is
    (word,) = TesseractOcr(60.0, OcrSettings(min_dpi=300, max_dpi=0)).read(Path("page.png"), 0, page)
    assert word.text == "INVOICE"
    assert all(0 <= value <= bound for value, bound in zip(word.box, (500, 250, 500, 250), strict=True))
    assert _iou(word.box, ink) > 0.6, (word.box, ink)  # where the word is on the stored page, not the upscaled one


@needs_tesseract
def test_a_300_dpi_bilevel_tiff_downscaled_to_200(tmp_path: Path) -> None:
    page, ink = _page_with_word((900, 450), 60, mode="1")
    page.save(tmp_path / "page.tif", compression="group4", dpi=(300, 300))
    ((number, stored),) = list(read_pages(tmp_path / "page.tif"))
    assert number == 0 and page_dpi(stored) == pytest.approx(300.0)
    seen = prepare_page(stored, OcrSettings(min_dpi=0, max_dpi=200))
    assert seen.size == (600, 300) and seen.mode == "L" and seen.info["dpi"] == (200, 200)  # grey keeps strokes
    page.info["dpi"] = (300, 300)
    assert prepare_page(page, OcrSettings(min_dpi=0, max_dpi=200)).mode == "L"  # a mode "1" page too
    (word,) = TesseractOcr(60.0, OcrSettings(min_dpi=0, max_dpi=200)).read(tmp_path / "page.tif", 0, stored)
    assert word.text == "INVOICE" and _iou(word.box, ink) > 0.6, (word.box, ink)


@needs_tesseract
def test_prediction_reads_a_page_as_data_prep_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """The words predict.py and fine-tuning's OCR give a model come from data prep's reading of the page (the default
    OcrSettings: resolution, segmentation, boxes mapped back), not from Tesseract's plain one."""
    import data_prep.ocr
    from data_prep.page_words import ocr_words

    page, ink = _page_with_word((500, 250), 24)
    page.info["dpi"] = (100, 100)
    seen: list[tuple[tuple[int, int], OcrSettings]] = []

    def spy(image: Image.Image, settings: OcrSettings) -> Image.Image:
        read = prepare_page(image, settings)
        seen.append((read.size, settings))
        return read

    monkeypatch.setattr(data_prep.ocr, "prepare_page", spy)
    (word,) = ocr_words(page)
    assert seen == [((750, 375), OcrSettings())]  # 100 dpi read at the default 150
    assert word.text == "INVOICE" and _iou(word.box, ink) > 0.6, (word.box, ink)
