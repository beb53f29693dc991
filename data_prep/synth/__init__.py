"""Embedded synthetic document corpus: scanned-looking forms/letters with exact word boxes, offline and seeded.

``generate_page(seed, index)`` builds one page in memory; ``write_corpus`` (or ``python -m data_prep.synth``)
writes many in FUNSD format. The same (seed, index) always gives the same bytes.
"""

from .classes_format import DOCUMENT_KINDS, write_class_split
from .cord_format import to_cord, write_cord_split
from .corpus import CorpusResult, write_corpus
from .document import LABELS, SynthEntity, SynthPage, SynthWord
from .docvqa_format import write_question_split
from .funsd_format import to_funsd, write_page
from .generate import generate_page, page_id, render_clean

__all__ = [
    "DOCUMENT_KINDS",
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
    "write_class_split",
    "write_cord_split",
    "write_corpus",
    "write_page",
    "write_question_split",
]
