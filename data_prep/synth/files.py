"""How the synthetic splits put a file on disk, and the words file they share: one place for both, so the FUNSD,
CORD, classification and question-answering layouts cannot drift apart."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from layoutlmv3.atomic_files import write_bytes

from .document import SynthPage


def write_atomically(path: Path, content: str | Image.Image) -> None:
    """Text (UTF-8) or an image (PNG) written under a hidden temporary name and renamed into place
    (`layoutlmv3.atomic_files`): an interrupted run leaves no half file that a reader or a resume would take."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        data = content.encode("utf-8")
    else:
        buffer = io.BytesIO()
        content.save(buffer, format="PNG")
        data = buffer.getvalue()
    write_bytes(path, data)


def words_json(page: SynthPage) -> str:
    """The page's words file, the layout the classification and question readers take
    (`layoutlmv3.page_layout.read_words`):
    ``{"words": [{"text", "box" (pixels), "line"}]}``, a word's line being its entity's."""
    words = [{"text": w.text, "box": list(w.box), "line": e.line_id} for e in page.entities for w in e.words]
    return json.dumps({"words": words})
