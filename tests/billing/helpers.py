"""Helpers of the billing tests: the seeded usage's prices and days, the clock record_call reads, sums computed
from the ledger by hand, and a reader of the dashboard's pages. The fixtures that use them are in conftest.py."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from datetime import timezone as dt_timezone
from decimal import Decimal
from html.parser import HTMLParser
from typing import Any

CODE = b"def handler(event, context):\n    return event\n"
# Prices per 1,000 tokens (prompt, completion), and when they change: from DAY0 on, then from PRICE_CHANGE on.
DAY0 = datetime(2026, 3, 1, tzinfo=dt_timezone.utc)
PRICE_CHANGE = datetime(2026, 5, 1, tzinfo=dt_timezone.utc)
PRICES = {
    "llama3.1:8b": [("0.050000", "0.080000"), ("0.040000", "0.060000")],
    "qwen2.5:14b": [("0.100000", "0.150000"), ("0.120000", "0.180000")],
    "mistral:7b": [("0.040000", "0.060000"), ("0.040000", "0.060000")],
}
UNPRICED_MODEL = "experimental:1b"
FUNCTION_NAMES = ("summarise-tickets", "translate-docs", "classify-email", "draft-replies", "extract-invoices",
                  "review-code", "tag-images", "answer-faq")
MODELS = [*PRICES, UNPRICED_MODEL]


@dataclass
class Clock:
    """The moment record_call takes as now."""

    now: datetime = field(default_factory=lambda: DAY0)


# --- sums computed from the ledger by hand ----------------------------------------------------------------------

@dataclass
class Sums:
    """What a set of ledger rows and jobs adds up to, computed in Python from the rows themselves."""

    calls: int = 0
    failed_calls: int = 0
    unmetered_calls: int = 0
    uncosted_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = Decimal(0)
    jobs: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add_call(self, call: Any) -> None:
        self.calls += 1
        self.failed_calls += call.status == "error"
        if call.prompt_tokens is None or call.completion_tokens is None:
            self.unmetered_calls += 1
        else:
            self.prompt_tokens += call.prompt_tokens
            self.completion_tokens += call.completion_tokens
        if call.cost is None:
            self.uncosted_calls += 1
        else:
            self.cost += call.cost


def local_day(moment: datetime) -> date:
    from django.utils import timezone

    return timezone.localdate(moment)


# --- reading pages ----------------------------------------------------------------------------------------------

class PageReader(HTMLParser):
    """Collects the text of every element with an id, and of every cell of every table row with a data-key."""

    VOID = {"br", "img", "input", "meta", "link", "hr", "area", "base", "col", "source", "wbr", "path", "rect",
            "line"}

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.rows: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
        self._open: list[tuple[str, str | None, list[str]]] = []
        self._table: list[str | None] = []
        self._row: tuple[str, dict[str, str]] | None = None
        self._cell: list[str] | None = None
        self._cell_classes: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table":
            self._table.append(attributes.get("id"))
        if tag == "tr" and attributes.get("data-key") is not None and self._table and self._table[-1]:
            self._row = (attributes["data-key"], {})
            self.rows[self._table[-1]][attributes["data-key"]] = self._row[1]
        if tag == "td" and self._row is not None:
            self._cell, self._cell_classes = [], (attributes.get("class") or "").split()
        if tag not in self.VOID:
            self._open.append((tag, attributes.get("id"), []))

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            text = " ".join("".join(self._cell).split())
            for name in self._cell_classes or [f"cell{len(self._row[1])}"]:
                self._row[1][name] = text
            self._cell = None
        if tag == "tr":
            self._row = None
        if tag == "table" and self._table:
            self._table.pop()
        while self._open:
            open_tag, element_id, text = self._open.pop()
            if element_id:
                self.by_id[element_id] = " ".join("".join(text).split())
            if self._open:
                self._open[-1][2].extend(text)
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1][2].append(data)
        if self._cell is not None:
            self._cell.append(data)
