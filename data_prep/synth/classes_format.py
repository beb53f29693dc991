"""Write synthetic pages as a document-classification split (RVL-CDIP's folder-per-class layout): each page's
template (form, letterhead_form, invoice, letter, memo) is its class, ``{split}/{kind}/{id}.png`` its image and
``{id}.json`` its words (text, pixel box, line), the words file the classification reader takes."""

from __future__ import annotations

from pathlib import Path

from .files import words_json, write_atomically
from .generate import generate_page, page_id
from .layout import TEMPLATES

DOCUMENT_KINDS = tuple(sorted(TEMPLATES))  # every class a synthetic page can have, small splits included


def write_class_split(out_dir: str | Path, pages: int, seed: int = 0) -> None:
    """Pages ``0..pages-1`` of corpus ``seed`` under ``out_dir/{kind}/``, each file renamed into place."""
    out = Path(out_dir)
    for index in range(pages):
        page, name = generate_page(seed, index), page_id(seed, index)
        write_atomically(out / page.kind / f"{name}.json", words_json(page))
        write_atomically(out / page.kind / f"{name}.png", page.image)
