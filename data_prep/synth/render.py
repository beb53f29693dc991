"""Draw a :class:`Layout` onto a clean grayscale page and measure every word's exact ink box.

Each word is rasterised into its own glyph mask, the box is that mask's non-zero extent, and the same mask is
pasted onto the page: the box is exact by construction (it encloses every inked pixel, antialiasing included,
and nothing else), unlike ``font.getbbox`` which pads with side bearings and baseline extents.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageDraw

from .document import Box, SynthEntity, SynthWord, union_box
from .fonts import FontSpec, load, text_width
from .layout import Layout, Run, Shape

SHADE = 225  # gray of shaded table headers: light enough to read as background, not ink


@dataclass
class RenderedPage:
    """An un-degraded page: the image, its entities, and the boxes of every non-text mark (for checks)."""

    image: Image.Image
    entities: list[SynthEntity]
    shape_boxes: list[Box]
    kind: str = ""  # the layout's template (document class)


def draw_word(page: Image.Image, word: str, x: int, baseline: int, font: FontSpec, ink: int) -> Box:
    """Paste ``word`` with its left end at ``x`` on ``baseline``; return its ink box on the page."""
    face = load(font)
    left, top, right, bottom = face.getbbox(word, anchor="ls")
    mask = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(mask).text((2 - left, 2 - top), word, fill=255, font=face, anchor="ls")
    ink_box = mask.getbbox()
    if ink_box is None:
        raise ValueError(f"word {word!r} renders no ink")
    origin_x, origin_y = x + left - 2, baseline + top - 2
    page.paste(ink, (origin_x, origin_y), mask)
    return origin_x + ink_box[0], origin_y + ink_box[1], origin_x + ink_box[2], origin_y + ink_box[3]


def word_positions(run: Run) -> list[int]:
    """Left x of each word, from the width of the text before it, matching how layout measured the run."""
    return [run.x + (text_width(" ".join(run.words[:i]) + " ", run.font) if i else 0) for i in range(len(run.words))]


def draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, ink: int) -> Box:
    """Draw a ruling line, box outline or shade; return the pixels it may cover."""
    x0, y0, x1, y1 = shape.box
    if shape.kind == "shade":
        draw.rectangle(shape.box, fill=SHADE)
    elif shape.kind == "rect":
        draw.rectangle(shape.box, outline=ink, width=shape.width)
    else:
        draw.line(shape.box, fill=ink, width=shape.width)
    pad = shape.width  # line ends/width spread up to one width around the nominal coordinates
    return min(x0, x1) - pad, min(y0, y1) - pad, max(x0, x1) + pad + 1, max(y0, y1) + pad + 1


def render(layout: Layout, ink: int = 0) -> RenderedPage:
    """Rasterise shapes first (so text stays on top), then every run as one entity."""
    page = Image.new("L", layout.size, 255)
    draw = ImageDraw.Draw(page)
    shape_boxes = [draw_shape(draw, shape, ink) for shape in layout.shapes]
    links: dict[int, list[tuple[int, int]]] = {}
    for pair in layout.links:
        for index in pair:
            links.setdefault(index, []).append(pair)
    entities = []
    for index, run in enumerate(layout.runs):
        words = [
            SynthWord(word, draw_word(page, word, x, run.baseline, run.font, ink))
            for word, x in zip(run.words, word_positions(run))
        ]
        box = union_box([w.box for w in words])
        entities.append(SynthEntity(index, run.label, words, box, run.line, links.get(index, [])))
    return RenderedPage(page, entities, shape_boxes, layout.kind)
