"""Realistic document text: form titles, field labels with matching values, tables, prose (Faker, offline).

Everything draws from one seeded :class:`TextSource` per page, so a page's text depends only on its seed.
Faker's relative-date providers (``date()``, ``date_this_year()``) are avoided: they depend on today's date.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import date
from functools import lru_cache

from faker import Faker

TITLES = (
    "PURCHASE ORDER",
    "EXPENSE REPORT",
    "INVOICE",
    "APPLICATION FOR EMPLOYMENT",
    "REQUEST FOR PROPOSAL",
    "FAX TRANSMITTAL",
    "CHANGE REQUEST",
    "PROJECT STATUS REPORT",
    "SHIPPING NOTICE",
    "CLAIM FORM",
    "REGISTRATION FORM",
    "TEST REPORT",
    "BUDGET REVIEW",
    "TRAVEL AUTHORIZATION",
    "VENDOR INFORMATION",
    "WORK ORDER",
    "QUALITY CONTROL REPORT",
    "MATERIAL REQUISITION",
    "CUSTOMER FEEDBACK",
    "Research Proposal",
    "Marketing Plan Summary",
    "Contract Approval Form",
    "Product Evaluation",
    "Account Setup Request",
)
MEMO_TITLES = ("MEMORANDUM", "Memorandum", "INTEROFFICE MEMO", "FAX TRANSMITTAL", "FAX COVER SHEET", "NOTICE")
SECTIONS = (
    "GENERAL INFORMATION",
    "Contact Details",
    "Remarks",
    "Comments",
    "Instructions",
    "Summary",
    "Description of Work",
    "Terms and Conditions",
    "Background",
    "Objectives",
    "Results",
    "Approval",
    "Shipping Information",
    "Billing Information",
    "Section 2: Project Details",
    "Notes",
)
DEPARTMENTS = (
    "Marketing",
    "Research",
    "Finance",
    "Legal",
    "Operations",
    "Sales",
    "Purchasing",
    "Quality Assurance",
    "Human Resources",
    "Engineering",
    "Accounting",
    "Public Affairs",
)
STATUSES = ("Open", "Closed", "Pending", "Approved", "Shipped", "On Hold", "Complete", "Rejected")
CHECKBOX_GROUPS = (
    ("Payment method:", ("Cash", "Check", "Credit Card", "Wire Transfer")),
    ("Status:", ("New", "Revised", "Cancelled")),
    ("Priority:", ("Low", "Medium", "High", "Urgent")),
    ("Is this a renewal?", ("Yes", "No")),
    ("Ship via:", ("Ground", "Air", "Express", "Freight")),
    ("Type of request:", ("Information", "Sample", "Quotation", "Service")),
    ("Approved:", ("Yes", "No", "Pending")),
    ("Distribution:", ("Internal", "External", "Confidential")),
    ("Employment:", ("Full-time", "Part-time", "Temporary", "Contract")),
    ("Has the vendor been contacted?", ("Yes", "No")),
)
SIGNATURE_CAPTIONS = ("Signature", "Authorized Signature", "Approved by", "Prepared by", "Received by")


@lru_cache(maxsize=1)
def _faker() -> Faker:
    """One Faker per process: building it costs ~20 ms, reseeding it per page is free."""
    return Faker("en_US")


class TextSource:
    """Seeded text generator for one page; wraps a reseeded Faker and a ``random.Random``."""

    def __init__(self, seed: int) -> None:
        self.fake = _faker()
        self.fake.seed_instance(seed)
        self.rng = random.Random(seed)
        self.used_labels: set[str] = set()

    def date(self) -> str:
        """A date between 1985 and 2005 (the era of FUNSD's scans) in one of several office formats."""
        day = self.fake.date_between_dates(date(1985, 1, 1), date(2005, 12, 31))
        fmt = self.rng.choice(("%m/%d/%Y", "%m/%d/%y", "%B %d, %Y", "%d-%b-%Y", "%Y-%m-%d", "%b. %d, %Y"))
        return day.strftime(fmt)

    def amount(self, high: float = 25_000.0) -> str:
        """A currency amount, mostly with a dollar sign and thousands separators."""
        value = self.rng.uniform(1.0, high) if self.rng.random() < 0.8 else self.rng.uniform(1.0, 200.0)
        return f"${value:,.2f}" if self.rng.random() < 0.85 else f"{value:,.2f}"

    def code(self) -> str:
        """A reference/account/part number such as ``KX-4471`` or ``20381-07``."""
        return self.fake.bothify(self.rng.choice(("??-####", "#####-##", "???###", "#-####-###", "##/###"))).upper()

    def name(self) -> str:
        return self.fake.name()

    def sentence(self, words: int = 8) -> str:
        return self.fake.sentence(nb_words=words)

    def paragraph(self) -> str:
        return self.fake.paragraph(nb_sentences=self.rng.randint(2, 6))

    def city_line(self) -> str:
        return f"{self.fake.city()}, {self.fake.state_abbr()} {self.fake.zipcode()}"

    def title(self) -> str:
        """A page title: a form name, sometimes qualified by a company or a catch phrase."""
        title = self.rng.choice(TITLES)
        if self.rng.random() < 0.2:
            title = f"{self.fake.company()} {title.title()}"
        return title

    def memo_title(self) -> str:
        return self.rng.choice(MEMO_TITLES)

    def section(self) -> str:
        return self.rng.choice(SECTIONS)

    def field(self) -> tuple[str, str]:
        """A (question, answer) pair like ``("Date:", "12/03/1998")``; labels do not repeat within a page."""
        fresh = [pair for pair in FIELDS if pair[0] not in self.used_labels] or list(FIELDS)
        label, value = self.rng.choice(fresh)
        self.used_labels.add(label)
        return self.style_label(label), value(self)

    def style_label(self, label: str) -> str:
        """Label casing/punctuation as seen on real forms: ``Date:``, ``DATE:`` or ``Date``."""
        roll = self.rng.random()
        if roll < 0.15:
            return label.upper() + ":"
        if roll < 0.25:
            return label
        return label + ":"

    def checkbox_group(self) -> tuple[str, tuple[str, ...]]:
        return self.rng.choice(CHECKBOX_GROUPS)

    def signature_caption(self) -> str:
        return self.rng.choice(SIGNATURE_CAPTIONS)

    def table(self, rows: int) -> tuple[list[str], list[list[str]], list[bool]]:
        """Header names, ``rows`` rows of cell texts, and which columns are numeric (right-aligned)."""
        columns = list(self.rng.choice(TABLES))
        if len(columns) > 3 and self.rng.random() < 0.3:
            columns.pop(self.rng.randrange(1, len(columns)))
        header = [name for name, _, _ in columns]
        body = [[make(self, row) for _, make, _ in columns] for row in range(rows)]
        return header, body, [numeric for _, _, numeric in columns]


Column = tuple[str, Callable[[TextSource, int], str], bool]

FIELDS: tuple[tuple[str, Callable[[TextSource], str]], ...] = (
    ("Date", TextSource.date),
    ("Name", TextSource.name),
    ("To", TextSource.name),
    ("From", TextSource.name),
    ("Company", lambda t: t.fake.company()),
    ("Address", lambda t: t.fake.street_address()),
    ("City", lambda t: t.city_line()),
    ("Phone", lambda t: t.fake.phone_number()),
    ("Fax", lambda t: t.fake.phone_number()),
    ("E-mail", lambda t: t.fake.company_email()),
    ("Title", lambda t: t.fake.job()),
    ("Department", lambda t: t.rng.choice(DEPARTMENTS)),
    ("Account No.", TextSource.code),
    ("Invoice No.", TextSource.code),
    ("P.O. Number", TextSource.code),
    ("Reference", TextSource.code),
    ("Amount", TextSource.amount),
    ("Total Cost", TextSource.amount),
    ("Budget", TextSource.amount),
    ("Project", lambda t: t.fake.catch_phrase()),
    ("Subject", lambda t: t.fake.bs().capitalize()),
    ("Description", lambda t: t.sentence(t.rng.randint(4, 14))),
    ("Approved By", TextSource.name),
    ("Requested By", TextSource.name),
    ("Terms", lambda t: t.rng.choice(("Net 30", "Net 60", "Due on receipt", "2% 10, Net 30"))),
    ("Quantity", lambda t: str(t.rng.randint(1, 5000))),
    ("Pages", lambda t: str(t.rng.randint(1, 24))),
    ("Start Date", TextSource.date),
    ("Due Date", TextSource.date),
    ("Location", lambda t: t.city_line()),
    ("Status", lambda t: t.rng.choice(STATUSES)),
    ("Comments", lambda t: t.sentence(t.rng.randint(6, 18))),
)

TABLES: tuple[tuple[Column, ...], ...] = (
    (
        ("No.", lambda t, row: str(row + 1), True),
        ("Description", lambda t, row: t.fake.catch_phrase(), False),
        ("Qty", lambda t, row: str(t.rng.randint(1, 250)), True),
        ("Unit Price", lambda t, row: t.amount(500.0), True),
        ("Amount", lambda t, row: t.amount(), True),
    ),
    (
        ("Date", lambda t, row: t.date(), False),
        ("Employee", lambda t, row: t.name(), False),
        ("Task", lambda t, row: t.fake.bs().capitalize(), False),
        ("Hours", lambda t, row: f"{t.rng.uniform(0.5, 12):.1f}", True),
    ),
    (
        ("Name", lambda t, row: t.name(), False),
        ("Department", lambda t, row: t.rng.choice(DEPARTMENTS), False),
        ("Phone", lambda t, row: t.fake.numerify("###-###-####"), False),
        ("Status", lambda t, row: t.rng.choice(STATUSES), False),
    ),
    (
        ("Part No.", lambda t, row: t.code(), False),
        ("Description", lambda t, row: t.fake.catch_phrase(), False),
        ("Qty", lambda t, row: str(t.rng.randint(1, 900)), True),
        ("Location", lambda t, row: t.fake.city(), False),
    ),
    (
        ("Account", lambda t, row: t.code(), False),
        ("Description", lambda t, row: t.rng.choice(DEPARTMENTS) + " " + t.fake.word(), False),
        ("Budget", lambda t, row: t.amount(), True),
        ("Actual", lambda t, row: t.amount(), True),
    ),
    (
        ("Brand", lambda t, row: t.fake.last_name().upper(), False),
        ("Code", lambda t, row: t.code(), False),
        ("Start", lambda t, row: t.date(), False),
        ("Units", lambda t, row: f"{t.rng.randint(10, 99999):,}", True),
        ("Cost", lambda t, row: t.amount(), True),
    ),
)
