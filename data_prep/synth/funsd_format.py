"""Write a page in the FUNSD layout: ``images/{id}.png`` plus ``annotations/{id}.json``.

The JSON matches FUNSD exactly (``{"form": [{"box", "text", "label", "words", "linking", "id"}]}``, 4-space
indent), so any FUNSD reader consumes the corpus unchanged. Line ids are not part of FUNSD and are not
written; since entities never span lines, each entity box is already a one-line segment box.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .document import SynthPage
from .files import write_atomically


def to_funsd(page: SynthPage) -> dict[str, Any]:
    """The FUNSD annotation dict of ``page`` (boxes as [x0, y0, x1, y1] lists, links as [question, answer])."""
    return {
        "form": [
            {
                "box": list(entity.box),
                "text": entity.text,
                "label": entity.label,
                "words": [{"box": list(word.box), "text": word.text} for word in entity.words],
                "linking": [list(pair) for pair in entity.linking],
                "id": entity.id,
            }
            for entity in page.entities
        ]
    }


def page_paths(out_dir: Path, page_id: str) -> tuple[Path, Path]:
    """Image and annotation paths of ``page_id`` under a FUNSD-style corpus directory."""
    return out_dir / "images" / f"{page_id}.png", out_dir / "annotations" / f"{page_id}.json"


def is_complete(out_dir: Path, page_id: str) -> bool:
    """A page is complete once both files exist; each is renamed into place only after it is fully written."""
    return all(path.is_file() for path in page_paths(out_dir, page_id))


def write_page(page: SynthPage, out_dir: Path) -> None:
    """Write the image, then the annotation, each atomically, so an interrupted run leaves no half page."""
    image_path, annotation_path = page_paths(out_dir, page.page_id)
    write_atomically(image_path, page.image)
    write_atomically(annotation_path, json.dumps(to_funsd(page), indent=4))
