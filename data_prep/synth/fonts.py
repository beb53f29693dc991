"""DejaVu font loading and text measurement shared by layout (to wrap and align) and rendering (to draw)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

# Debian's fonts-dejavu-core/-extra location; override with SYNTH_FONT_DIR on other systems.
FONT_DIR = Path(os.environ.get("SYNTH_FONT_DIR", "/usr/share/fonts/truetype/dejavu"))

# Faces per family: regular, bold, slanted. Only faces shipped by fonts-dejavu-core are used.
FAMILIES: dict[str, tuple[str, str, str]] = {
    "sans": ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique"),
    "serif": ("DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic"),
    "mono": ("DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSansMono-Oblique"),
}


@dataclass(frozen=True)
class FontSpec:
    """A font face (file stem under FONT_DIR) at a pixel size; hashable so loaded fonts can be cached."""

    face: str
    size: int


@lru_cache(maxsize=256)
def load(spec: FontSpec) -> ImageFont.FreeTypeFont:
    """Load (once per process) the TrueType font for ``spec``; fails with a hint when DejaVu is missing."""
    path = FONT_DIR / f"{spec.face}.ttf"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: install fonts-dejavu-core or set SYNTH_FONT_DIR")
    return ImageFont.truetype(str(path), spec.size)


def text_width(text: str, spec: FontSpec) -> int:
    """Advance width of ``text`` in pixels, rounded the same way rendering places words."""
    return round(load(spec).getlength(text))


def ascent(spec: FontSpec) -> int:
    """Distance from the top of a text line to its baseline."""
    return load(spec).getmetrics()[0]


def descent(spec: FontSpec) -> int:
    """Distance from the baseline to the bottom of a text line."""
    return load(spec).getmetrics()[1]
