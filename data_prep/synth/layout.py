"""Page layouts: where every text run and ruling line goes on a form, invoice, letter or memo.

A page is a vertical flow of blocks (letterhead, title, question/answer fields, check boxes, tables, paragraphs,
signature lines) chosen at random per page. A block that does not fit in the remaining space is rolled back.
The output is a :class:`Layout` of text runs (one future entity each, never spanning two lines) and shapes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from .document import Box
from .fonts import FAMILIES, FontSpec, ascent, descent, text_width
from .text import TextSource

PAGE_W, PAGE_H = 1000, 1300


@dataclass
class Run:
    """Words drawn left to right from ``x`` on one baseline: becomes one entity."""

    words: list[str]
    x: int
    baseline: int
    font: FontSpec
    label: str
    line: int


@dataclass
class Shape:
    """A non-text mark: ``line`` from (x0, y0) to (x1, y1), ``rect`` outline, or light-gray ``shade`` fill."""

    kind: str
    box: Box
    width: int = 1


@dataclass
class Layout:
    """Everything to draw on one page; ``links`` are (question run, answer run) index pairs."""

    size: tuple[int, int]
    runs: list[Run]
    shapes: list[Shape]
    links: list[tuple[int, int]]
    kind: str = ""  # the template: form, letterhead_form, invoice, letter or memo (the document class)


@dataclass(frozen=True)
class Theme:
    """Per-page typography and spacing, so pages differ in look as real documents do."""

    body: FontSpec
    bold: FontSpec
    answer: FontSpec
    small: FontSpec
    spacing: float
    margin: int

    def line_height(self, font: FontSpec) -> int:
        return round(font.size * self.spacing)


def make_theme(rng: random.Random) -> Theme:
    """Pick a body family, size and a distinct "filled-in" answer face (typewriter or slanted)."""
    family = rng.choice(("sans", "sans", "serif", "serif", "mono"))
    regular, bold, slanted = FAMILIES[family]
    size = rng.randint(15, 19)
    answer_face = rng.choice((regular, regular, FAMILIES["mono"][0], slanted))
    return Theme(
        body=FontSpec(regular, size),
        bold=FontSpec(bold, size),
        answer=FontSpec(answer_face, size),
        small=FontSpec(regular, size - rng.randint(3, 4)),
        spacing=rng.uniform(1.35, 1.7),
        margin=rng.randint(60, 110),
    )


def wrap(words: list[str], font: FontSpec, width: int) -> list[list[str]]:
    """Greedy word wrap to ``width`` pixels; a word wider than ``width`` gets a line of its own."""
    lines: list[list[str]] = []
    for word in words:
        if lines and text_width(" ".join([*lines[-1], word]), font) <= width:
            lines[-1].append(word)
        else:
            lines.append([word])
    return lines


def fit_words(words: list[str], font: FontSpec, width: int) -> list[str]:
    """The longest prefix of ``words`` (at least one word) that fits in ``width``; for narrow table cells."""
    kept = words[:1]
    for word in words[1:]:
        if text_width(" ".join([*kept, word]), font) > width:
            break
        kept.append(word)
    return kept


@dataclass
class PageBuilder:
    """Flow cursor plus the runs/shapes placed so far; blocks append to it and may be rolled back."""

    text: TextSource
    theme: Theme
    y: int = 0
    limit: int = PAGE_H
    runs: list[Run] = field(default_factory=list)
    shapes: list[Shape] = field(default_factory=list)
    links: list[tuple[int, int]] = field(default_factory=list)
    lines: int = 0

    @property
    def rng(self) -> random.Random:
        return self.text.rng

    @property
    def left(self) -> int:
        return self.theme.margin

    @property
    def right(self) -> int:
        return PAGE_W - self.theme.margin

    def new_line(self) -> int:
        self.lines += 1
        return self.lines - 1

    def put(self, words: list[str], x: int, baseline: int, font: FontSpec, label: str, line: int) -> int:
        """Place one run and return its index (used for linking)."""
        self.runs.append(Run(words, x, baseline, font, label, line))
        return len(self.runs) - 1

    def put_line(self, text: str, font: FontSpec, label: str, align: str = "left", x: int | None = None) -> None:
        """Place ``text`` as a full row at the cursor (left/center/right aligned) and advance the cursor."""
        width = text_width(text, font)
        if x is None:
            x = {"left": self.left, "center": (PAGE_W - width) // 2, "right": self.right - width}[align]
        self.put(text.split(), x, self.y + ascent(font), font, label, self.new_line())
        self.y += self.theme.line_height(font)

    def rule(self, width: int = 1) -> None:
        """A horizontal ruling line across the content width, with some air around it."""
        self.y += 4
        self.shapes.append(Shape("line", (self.left, self.y, self.right, self.y), width))
        self.y += width + self.theme.body.size // 2

    def _inside(self, run: Run) -> bool:
        """Whether ``run`` stays above ``limit`` and within the side margins' outer half."""
        right = run.x + text_width(" ".join(run.words), run.font)
        within_sides = run.x >= self.left // 2 and right <= PAGE_W - self.left // 2
        return within_sides and run.baseline + descent(run.font) <= self.limit

    def gap(self, lines: float = 1.0) -> None:
        self.y += round(self.theme.body.size * lines)

    def place(self, block: Callable[[PageBuilder], None]) -> bool:
        """Run ``block``; undo it and report False when it crosses ``limit`` or runs into a side edge."""
        saved = (self.y, len(self.runs), len(self.shapes), len(self.links), self.lines)
        block(self)
        if self.y <= self.limit and all(self._inside(run) for run in self.runs[saved[1] :]):
            return True
        self.y, n_runs, n_shapes, n_links, self.lines = saved
        del self.runs[n_runs:], self.shapes[n_shapes:], self.links[n_links:]
        return False


# --------------------------------------------------------------------------------------------- blocks


def letterhead(b: PageBuilder) -> None:
    """Company name in large bold type with its address beneath, often closed by a rule."""
    t, align = b.text, b.rng.choice(("left", "center"))
    b.put_line(t.fake.company(), FontSpec(b.theme.bold.face, b.rng.randint(24, 32)), "header", align)
    b.put_line(t.fake.street_address(), b.theme.small, "other", align)
    b.put_line(t.city_line(), b.theme.small, "other", align)
    if b.rng.random() < 0.5:
        b.put_line(f"Tel. {t.fake.numerify('(###) ###-####')}", b.theme.small, "other", align)
    if b.rng.random() < 0.6:
        b.rule(b.rng.choice((1, 2)))
    b.gap(0.5)


def _title(b: PageBuilder, text: str) -> None:
    """A document title, centered or flush left, sometimes with a form number above it."""
    if b.rng.random() < 0.35:
        b.put_line(f"Form {b.text.code()}", b.theme.small, "other", "right")
    font = FontSpec(b.theme.bold.face, b.rng.randint(20, 27))
    align = "center" if b.rng.random() < 0.7 else "left"
    for words in wrap(text.split(), font, b.right - b.left):
        b.put_line(" ".join(words), font, "header", align)
    b.gap(0.6)


def title(b: PageBuilder) -> None:
    _title(b, b.text.title())


def memo_title(b: PageBuilder) -> None:
    _title(b, b.text.memo_title())


def section_heading(b: PageBuilder) -> None:
    b.gap(0.3)
    b.put_line(b.text.section(), FontSpec(b.theme.bold.face, b.theme.body.size + 1), "header")


def _field(
    b: PageBuilder, question: str, answer: str, x: int, width: int, tab: int, q_font: FontSpec, underline: bool
) -> int:
    """One question with its (possibly wrapped, possibly empty) answer at row ``b.y``; returns rows used."""
    a_font = b.theme.answer
    base = max(ascent(q_font), ascent(a_font))
    step = max(b.theme.line_height(q_font), b.theme.line_height(a_font))
    line = b.new_line()
    q_index = b.put(question.split(), x, b.y + base, q_font, "question", line)
    answer_x = x + max(tab, text_width(question, q_font) + text_width("  ", q_font))
    words, room = answer.split(), x + width - answer_x
    rows = wrap(words, a_font, room) or [[]]
    if words and (room < 100 or any(text_width(w, a_font) > room for w in words)):
        answer_x, rows = x + 20, [[], *wrap(words, a_font, width - 20)]  # answer starts on the next row
    for row, row_words in enumerate(rows[:3]):
        baseline = b.y + base + row * step
        if row_words:
            a_index = b.put(row_words, answer_x, baseline, a_font, "answer", line if row == 0 else b.new_line())
            b.links.append((q_index, a_index))
        if underline and (row_words or not words):
            y = baseline + descent(a_font) + 1
            b.shapes.append(Shape("line", (answer_x - 4, y, x + width, y)))
    return len(rows[:3]) * step


def _fields(b: PageBuilder, pairs: list[tuple[str, str]], columns: int, q_font: FontSpec) -> None:
    """Lay out question/answer pairs in a grid of ``columns`` columns, answers at a shared tab stop or inline."""
    gutter = 40
    width = (b.right - b.left - gutter * (columns - 1)) // columns
    tab = 0
    if b.rng.random() < 0.5:
        tab = max(text_width(q, q_font) for q, _ in pairs) + text_width("   ", q_font)
        tab = tab if tab < width // 2 else 0
    underline = b.rng.random() < 0.35
    for start in range(0, len(pairs), columns):
        heights = [
            _field(b, q, a, b.left + col * (width + gutter), width, tab, q_font, underline)
            for col, (q, a) in enumerate(pairs[start : start + columns])
        ]
        b.y += max(heights) + (4 if underline else 0)
    b.gap(0.5)


def fields(b: PageBuilder) -> None:
    """A run of form fields ("Date:" -> "12/03/1998"); some answers are left blank as on real forms."""
    pairs = []
    for _ in range(b.rng.randint(2, 8)):
        question, answer = b.text.field()
        pairs.append((question, "" if b.rng.random() < 0.08 else answer))
    columns = 2 if b.rng.random() < 0.4 else 1
    _fields(b, pairs, columns, b.theme.bold if b.rng.random() < 0.5 else b.theme.body)


def memo_header(b: PageBuilder) -> None:
    """TO/FROM/DATE/SUBJECT lines of a memo or fax cover, closed by a rule."""
    t = b.text
    pairs = [("TO:", t.name()), ("FROM:", t.name()), ("DATE:", t.date()), ("SUBJECT:", t.fake.catch_phrase())]
    if b.rng.random() < 0.5:
        pairs.insert(2, ("CC:", f"{t.name()}, {t.name()}"))
    _fields(b, pairs, 1, b.theme.bold)
    b.rule(2)


def checkboxes(b: PageBuilder) -> None:
    """A prompt (question) with boxed options (answers), one box ticked, laid out in a row or a column."""
    prompt, options = b.text.checkbox_group()
    font, size = b.theme.body, round(b.theme.body.size * 0.75)
    step = b.theme.line_height(font)
    ticked = b.rng.randrange(len(options) + 1)  # == len(options): nothing ticked
    vertical = b.rng.random() < 0.35
    line = b.new_line()
    q_index = b.put(prompt.split(), b.left, b.y + ascent(font), font, "question", line)
    x = b.left + text_width(prompt, font) + 20
    for i, option in enumerate(options):
        width = size + 8 + text_width(option, font)
        if vertical or x + width > b.right:
            b.y += step
            x, line = b.left + 30, b.new_line()
        baseline = b.y + ascent(font)
        box = (x, baseline - size, x + size, baseline)
        b.shapes.append(Shape("rect", box))
        if i == ticked:
            b.shapes.append(Shape("line", (box[0] + 2, box[1] + 2, box[2] - 2, box[3] - 2), 2))
            b.shapes.append(Shape("line", (box[0] + 2, box[3] - 2, box[2] - 2, box[1] + 2), 2))
        b.links.append((q_index, b.put([option], x + size + 8, baseline, font, "answer", line)))
        x += width + 28
    b.y += step
    b.gap(0.5)


def _column_widths(font: FontSpec, bold: FontSpec, header: list[str], body: list[list[str]], pad: int) -> list[int]:
    return [
        max(text_width(header[c], bold), *(text_width(row[c], font) for row in body)) + 2 * pad
        for c in range(len(header))
    ]


def table(b: PageBuilder) -> None:
    """A ruled table: bold header cells (questions) linked to the cells beneath them (answers)."""
    rng, pad, pad_y = b.rng, 8, 5
    header, body, numeric = b.text.table(rng.randint(3, 8))
    font = FontSpec(b.theme.body.face, b.theme.body.size - rng.randint(0, 2))
    bold = FontSpec(b.theme.bold.face, font.size)
    avail = b.right - b.left
    widths = _column_widths(font, bold, header, body, pad)
    widest = max(range(len(widths)), key=widths.__getitem__)
    if sum(widths) > avail:  # shrink the widest column by truncating its cell texts
        room = avail - (sum(widths) - widths[widest]) - 2 * pad
        for row in body:
            row[widest] = " ".join(fit_words(row[widest].split(), font, room))
        widths = _column_widths(font, bold, header, body, pad)
    if rng.random() < 0.5:  # stretch to the full content width
        extra = max(0, avail - sum(widths)) // len(widths)
        widths = [w + extra for w in widths]
    edges = [b.left]
    for w in widths:
        edges.append(edges[-1] + w)
    row_h = ascent(font) + descent(font) + 2 * pad_y
    top, style = b.y, rng.choice(("grid", "rules", "frame"))
    if rng.random() < 0.3:
        b.shapes.append(Shape("shade", (edges[0], top, edges[-1], top + row_h)))

    def cell(c: int, text: str, cell_font: FontSpec, label: str) -> int:
        x = edges[c + 1] - pad - text_width(text, cell_font) if numeric[c] and label == "answer" else edges[c] + pad
        return b.put(text.split(), x, b.y + pad_y + ascent(cell_font), cell_font, label, b.new_line())

    heads = [cell(c, name, bold, "question") for c, name in enumerate(header)]
    for r, row in enumerate([None, *body]):
        if row is not None:
            b.links.extend((heads[c], cell(c, text, font, "answer")) for c, text in enumerate(row))
        b.y += row_h
        if style != "frame" or r in (0, len(body)):
            b.shapes.append(Shape("line", (edges[0], b.y, edges[-1], b.y)))
    b.shapes.append(Shape("line", (edges[0], top, edges[-1], top)))
    if style != "rules":
        xs = edges if style == "grid" else [edges[0], edges[-1]]
        b.shapes.extend(Shape("line", (x, top, x, b.y)) for x in xs)
    if numeric[-1] and "$" in body[0][-1] and rng.random() < 0.6:
        _total_row(b, edges, font, bold, pad)
    b.gap(1.0)


def _total_row(b: PageBuilder, edges: list[int], font: FontSpec, bold: FontSpec, pad: int) -> None:
    """A "Total:" question under the table with the amount right-aligned under the last column."""
    b.y += 6
    baseline, line = b.y + ascent(font), b.new_line()
    label = b.rng.choice(("Total:", "TOTAL", "Total Due:", "Grand Total:"))
    amount = b.text.amount(90_000.0)
    q_index = b.put(label.split(), edges[-2] - pad - text_width(label, bold), baseline, bold, "question", line)
    a_index = b.put([amount], edges[-1] - pad - text_width(amount, font), baseline, font, "answer", line)
    b.links.append((q_index, a_index))
    b.y += b.theme.line_height(font)


def paragraph(b: PageBuilder) -> None:
    """Running text (label ``other``), one run per printed line, sometimes under a section heading."""
    if b.rng.random() < 0.4:
        section_heading(b)
    font = b.theme.body
    indent = 30 if b.rng.random() < 0.3 else 0
    lines = wrap(b.text.paragraph().split(), font, b.right - b.left - indent)
    for i, words in enumerate(lines):
        b.put_line(" ".join(words), font, "other", x=b.left + (indent if i == 0 else 0))
    b.gap(0.6)


def signature(b: PageBuilder) -> None:
    """Signature lines with a caption beneath (question) and the signer's name or date above (answer)."""
    b.gap(1.5)
    slots = b.rng.randint(1, 2)
    width = min(320, (b.right - b.left - 60) // slots)
    a_font, caption_font = b.theme.answer, b.theme.small
    baseline = b.y + ascent(a_font)
    line_y = baseline + descent(a_font) + 3
    for slot in range(slots):
        x = b.left + slot * (width + 60)
        is_date = slot == 1 and b.rng.random() < 0.6
        caption = "Date" if is_date else b.text.signature_caption()
        c_index = b.put(caption.split(), x, line_y + 4 + ascent(caption_font), caption_font, "question", b.new_line())
        b.shapes.append(Shape("line", (x, line_y, x + width, line_y)))
        if b.rng.random() < 0.75:
            answer = b.text.date() if is_date else b.text.name()
            b.links.append((c_index, b.put(answer.split(), x + 10, baseline, a_font, "answer", b.new_line())))
    b.y = line_y + 4 + b.theme.line_height(caption_font)
    b.gap(0.8)


def letter_opening(b: PageBuilder) -> None:
    """Date, the recipient's address block, an optional "Re:" line and the salutation."""
    t, font = b.text, b.theme.body
    b.put_line(t.date(), font, "other", b.rng.choice(("left", "right")))
    b.gap(1.0)
    name = t.name()
    for text in (name, t.fake.job(), t.fake.company(), t.fake.street_address(), t.city_line()):
        b.put_line(text, font, "other")
    b.gap(1.0)
    if b.rng.random() < 0.5:
        _fields(b, [("Re:", t.fake.catch_phrase())], 1, b.theme.bold)
    b.put_line(f"Dear {b.rng.choice(('Mr.', 'Ms.', 'Dr.'))} {name.split()[-1]}:", font, "other")
    b.gap(0.5)


def letter_closing(b: PageBuilder) -> None:
    """Complimentary close, room for a signature, then the sender's name and title."""
    font = b.theme.body
    b.put_line(b.rng.choice(("Sincerely,", "Very truly yours,", "Best regards,", "Yours sincerely,")), font, "other")
    b.gap(2.5)
    b.put_line(b.text.name(), font, "other")
    b.put_line(b.text.fake.job(), font, "other")


def footer(b: PageBuilder) -> None:
    """Small print at the page foot: page number, form revision or a confidentiality note."""
    font = b.theme.small
    b.y = PAGE_H - b.theme.margin // 2 - b.theme.line_height(font)
    pages = b.rng.randint(1, 4)
    text = b.rng.choice(
        (
            f"Page {b.rng.randint(1, pages)} of {pages}",
            f"Form {b.text.code()} (Rev. {b.rng.randint(1, 12)}/{b.rng.randint(85, 99)})",
            "CONFIDENTIAL",
            b.text.fake.company(),
        )
    )
    b.put_line(text, font, "other", b.rng.choice(("left", "center", "right")))


Block = Callable[[PageBuilder], None]

# kind -> (opening blocks, pool the body is drawn from, closing blocks, pixels kept free for the closing)
TEMPLATES: dict[str, tuple[list[Block], list[Block], list[Block], int]] = {
    "form": ([title, fields], [fields, fields, checkboxes, table, paragraph], [signature], 120),
    "letterhead_form": ([letterhead, title, fields], [fields, checkboxes, table, paragraph], [signature], 120),
    "invoice": ([letterhead, title, fields, table], [fields, paragraph, checkboxes], [signature], 120),
    "letter": ([letterhead, letter_opening, paragraph], [paragraph, paragraph, table], [letter_closing], 170),
    "memo": ([memo_title, memo_header, paragraph], [paragraph, paragraph, table, fields], [], 0),
}


def compose(text: TextSource) -> Layout:
    """Build one page: a template's opening blocks, a random body until the page is full, then the closing."""
    rng = text.rng
    theme = make_theme(rng)
    b = PageBuilder(text, theme, y=theme.margin)
    kind = rng.choice(list(TEMPLATES))
    opening, pool, closing, reserve = TEMPLATES[kind]
    has_footer = rng.random() < 0.7
    page_end = PAGE_H - theme.margin - (40 if has_footer else 0)
    b.limit = page_end - reserve
    for block in opening:
        b.place(block)
    misses = 0
    while misses < 3 and rng.random() > 0.06:
        misses += not b.place(rng.choice(pool))
    b.limit = page_end
    for block in closing:
        b.place(block)
    if has_footer:
        b.limit = PAGE_H
        b.place(footer)
    return Layout((PAGE_W, PAGE_H), b.runs, b.shapes, b.links, kind)
