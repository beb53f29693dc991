"""Embedded synthetic document corpus: scanned-looking forms/letters with exact word boxes, offline and seeded.

``generate_page(seed, index)`` builds one page in memory; ``write_corpus`` (or ``python -m data_prep.synth``)
writes many in FUNSD format. The same (seed, index) always gives the same bytes.
"""

from .cord_format import to_cord, write_cord_split
from .corpus import CorpusResult, write_corpus
from .document import LABELS, SynthEntity, SynthPage, SynthWord
from .funsd_format import to_funsd, write_page
from .generate import generate_page, page_id, render_clean

__all__ = [
    "LABELS",
    "CorpusResult",
    "SynthEntity",
    "SynthPage",
    "SynthWord",
    "generate_page",
    "page_id",
    "render_clean",
    "to_cord",
    "to_funsd",
    "write_cord_split",
    "write_corpus",
    "write_page",
]
