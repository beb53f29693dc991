"""Round 4 of attacks on the newest surfaces: the OCR settings (pages resampled for Tesseract), the file list and
its writer's report, and transformers' Trainer saving our models. Each test is a hole found and closed."""

from __future__ import annotations

import pytest
from PIL import Image

from data_prep.ocr_settings import OcrSettings, prepare_page
from layoutlmv3 import page_sources


def test_an_upscaled_page_stays_under_the_pixel_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A page under the cap, upscaled to --ocr-min-dpi, must not become one over it (a 20000 x 4000 page of 100 dpi
    read at 300 would be 720 M pixels): the scale is lowered to what the cap allows, the dpi told follows it."""
    monkeypatch.setattr(page_sources, "MAX_PAGE_PIXELS", 100_000)
    page = Image.new("L", (400, 200), 255)
    page.info["dpi"] = (100, 100)
    seen = prepare_page(page, OcrSettings(min_dpi=300))
    assert seen.width * seen.height <= 100_000
    assert seen.width > 400 and abs(seen.width / seen.height - 2) < 0.02  # still upscaled, as far as allowed
    assert seen.info["dpi"][0] == round(100 * seen.width / 400)
    square = Image.new("L", (300, 300), 255)  # no dpi recorded: estimated 27, upscaled 44x to 1200 without the cap
    seen = prepare_page(square, OcrSettings(min_dpi=1200))
    assert seen.width * seen.height <= 100_000 and seen.width > 300


def test_a_page_over_the_cap_is_never_upscaled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(page_sources, "MAX_PAGE_PIXELS", 10_000)
    page = Image.new("L", (200, 100), 255)
    page.info["dpi"] = (100, 100)
    assert prepare_page(page, OcrSettings(min_dpi=300)) is page
