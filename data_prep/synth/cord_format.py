"""Write synthetic pages in CORD's layout (clovaai/cord: ``{split}/image/{id}.png`` + ``{split}/json/{id}.json``),
so the CORD reader and ``configs/finetune/cord.yaml`` are tested on files the project makes itself.

Each entity becomes a ``valid_line`` with CORD's word quads (x1..x4, y1..y4 clockwise from the top left) and a
CORD v2 category chosen by the entity's role (`CATEGORIES`); ``meta.image_size`` as CORD records it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .document import SynthPage
from .files import write_atomically
from .generate import generate_page, page_id

# CORD v2 fields standing in for the synthetic forms' roles (a receipt's item name and price, its totals).
CATEGORIES = {"header": "total.total_etc", "question": "menu.nm", "answer": "menu.price", "other": "menu.etc"}


def to_cord(page: SynthPage) -> dict[str, Any]:
    """The CORD annotation dict of ``page``."""
    width, height = page.image.size
    lines = []
    for entity in page.entities:
        words = []
        for word in entity.words:
            x0, y0, x1, y1 = word.box
            quad = {"x1": x0, "y1": y0, "x2": x1, "y2": y0, "x3": x1, "y3": y1, "x4": x0, "y4": y1}
            words.append({"quad": quad, "is_key": int(entity.label == "question"), "row_id": entity.line_id,
                          "text": word.text})  # fmt: skip
        lines.append({"words": words, "category": CATEGORIES[entity.label], "group_id": entity.id, "sub_group_id": 0})
    return {
        "dontcare": [],
        "valid_line": lines,
        "meta": {"version": "v2.0", "image_size": {"width": width, "height": height}},
    }


def write_cord_split(out_dir: str | Path, pages: int, seed: int = 0) -> None:
    """Pages ``0..pages-1`` of corpus ``seed`` as one CORD split directory (image/ and json/), each file renamed
    into place when written."""
    out = Path(out_dir)
    for index in range(pages):
        page, name = generate_page(seed, index), page_id(seed, index)
        write_atomically(out / "image" / f"{name}.png", page.image)
        write_atomically(out / "json" / f"{name}.json", json.dumps(to_cord(page), indent=1))
