"""The synthetic page data model: words with exact pixel boxes, grouped into labelled, linked entities.

Entities never span two visual lines: a value that wraps is split into one entity per line (same label,
each part linked to its question), so an entity's box is a tight line segment and ``line_id`` is unambiguous.
Several entities may share a line id (a question and its inline answer, a check-box prompt and its options).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

Box = tuple[int, int, int, int]
LABELS = ("header", "question", "answer", "other")


@dataclass
class SynthWord:
    """One whitespace-free token and its ink bounding box (x0, y0, x1, y1; x1/y1 exclusive) in page pixels."""

    text: str
    box: Box


@dataclass
class SynthEntity:
    """A FUNSD-style semantic entity: consecutive words on one line sharing a label."""

    id: int
    label: str
    words: list[SynthWord]
    box: Box
    line_id: int
    linking: list[tuple[int, int]] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The entity text as FUNSD stores it: its words joined by single spaces."""
        return " ".join(word.text for word in self.words)


@dataclass
class SynthPage:
    """A rendered (and usually degraded) grayscale page with its entity annotations."""

    image: Image.Image
    entities: list[SynthEntity]
    page_id: str
    kind: str = ""  # form, letterhead_form, invoice, letter or memo: the built-in document-classification label


def union_box(boxes: list[Box]) -> Box:
    """The smallest box enclosing all ``boxes`` (an entity's box is the union of its words)."""
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )
