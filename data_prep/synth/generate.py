"""The per-page pipeline: seeds -> text -> layout -> clean render -> scan degradation.

Every page is seeded from (corpus seed, page index) alone, so any page can be regenerated on its own and a
corpus comes out byte-identical whatever the number of workers or the order pages are produced in.
"""

from __future__ import annotations

import numpy as np

from .degrade import degrade
from .document import SynthPage
from .layout import compose
from .render import RenderedPage, render
from .text import TextSource


def page_id(seed: int, index: int) -> str:
    """File stem of page ``index`` of the corpus with ``seed`` (seed included so corpora never collide)."""
    return f"synth_{seed}_{index:06d}"


def _page_seeds(seed: int, index: int) -> tuple[int, int]:
    """Independent, well-mixed seeds for the text/layout stream and the scan-noise stream."""
    text_seed, scan_seed = np.random.SeedSequence([seed, index]).generate_state(2)
    return int(text_seed), int(scan_seed)


def render_clean(seed: int, index: int) -> RenderedPage:
    """The un-degraded page (exact ink boxes, shape boxes): what :func:`generate_page` starts from."""
    text = TextSource(_page_seeds(seed, index)[0])
    layout = compose(text)
    return render(layout, ink=text.rng.randint(0, 60))


def generate_page(seed: int, index: int) -> SynthPage:
    """Page ``index`` of the synthetic corpus ``seed``: a scanned-looking form, letter, memo or invoice."""
    clean = render_clean(seed, index)
    image, entities = degrade(clean.image, clean.entities, np.random.default_rng(_page_seeds(seed, index)[1]))
    return SynthPage(image, entities, page_id(seed, index), clean.kind)
