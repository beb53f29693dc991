"""Why a page was left out of the shards: stable reason strings, the record, and the exception carrying one.

Every page that does not become a sample becomes a :class:`Reject`, written to ``rejects.jsonl`` as
``{"source", "page", "reason", "detail"}`` and counted by reason in the manifest, so bad input is never lost
silently. ``page`` is 0-based; a file that cannot be opened at all is reported once, as its first page.
"""

from __future__ import annotations

from dataclasses import dataclass

UNREADABLE_IMAGE = "unreadable_image"  # the file cannot be opened / identified as an image
UNREADABLE_PAGE = "unreadable_page"  # one page (frame) of the file fails to decode
PAGE_TOO_LARGE = "page_too_large"  # more pixels than layoutlmv3.page_sources.MAX_PAGE_PIXELS (checked before decoding)
RENDER_TIMEOUT = "render_timeout"  # a PDF page still drawing after data_prep.pdf.RENDER_SECONDS (abandoned)
TOO_MANY_PAGES = "too_many_pages"  # pages of a file past page_sources.MAX_PAGES_PER_FILE (one reject for them all)
OCR_MISSING = "ocr_missing"  # no OCR given for the image or for this page
OCR_INVALID = "ocr_invalid"  # the given OCR file is not valid JSON of the expected shape
OCR_FAILED = "ocr_failed"  # tesseract exited with an error
OCR_TIMEOUT = "ocr_timeout"  # tesseract ran past --ocr-timeout
NO_WORDS = "no_words"  # the page has no word with visible text
ABSURD_BOX = "absurd_box"  # a word box is not 4 finite numbers or lies far outside the page
SAMPLE_TOO_LARGE = "sample_too_large"  # one sample alone exceeds --max-shard-bytes
DUPLICATE_KEY = "duplicate_key"  # the file's sample keys equal an earlier file's (e.g. "a.b.png" vs "a_b.png")
INTERNAL_ERROR = "internal_error"  # an unexpected exception while processing the file (a bug: see detail)

MAX_DETAIL_CHARS = 300


@dataclass(frozen=True)
class Reject:
    """One page left out, with a machine-countable reason and a human-readable detail."""

    source: str
    page: int
    reason: str
    detail: str = ""

    def to_json(self) -> dict[str, object]:
        return {"source": self.source, "page": self.page, "reason": self.reason, "detail": self.detail}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Reject:
        return cls(str(data["source"]), int(data["page"]), str(data["reason"]), str(data.get("detail", "")))


class PageRejected(Exception):
    """Raised by the page pipeline (reading, OCR, sample building) to turn the current page into a reject."""

    def __init__(self, reason: str, detail: object = "") -> None:
        self.reason = reason
        self.detail = str(detail)[:MAX_DETAIL_CHARS]
        super().__init__(f"{reason}: {self.detail}")

    def reject(self, source: str, page: int) -> Reject:
        return Reject(source, page, self.reason, self.detail)
