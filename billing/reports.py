"""Usage figures read from the daily roll-ups: a group's sums, and a user's own usage (the usage API)."""
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User
from django.db.models import QuerySet, Sum

from core.errors import DomainError
from core.ranges import DateRange

from .models import COST_QUANTUM, UsageDaily


@dataclass
class Figures:
    """Usage of some group over a range: sums of roll-up rows."""

    calls: int = 0
    failed_calls: int = 0
    unmetered_calls: int = 0
    estimated_calls: int = 0
    uncosted_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = field(default_factory=Decimal)
    jobs: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def failure_rate(self) -> float | None:
        """Failed calls over calls; None when there were no calls."""
        return self.failed_calls / self.calls if self.calls else None

    def add(self, other: "Figures") -> None:
        for name in ROLLUP_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @classmethod
    def from_sums(cls, row: dict[str, Any]) -> "Figures":
        """From a `values().annotate(**ROLLUP_SUMS)` row."""
        figures = cls(**{name: row[f"sum_{name}"] or 0 for name in ROLLUP_FIELDS})
        figures.cost = Decimal(figures.cost).quantize(COST_QUANTUM)
        return figures


ROLLUP_FIELDS = tuple(f.name for f in fields(Figures))
CALL_FIELDS = tuple(name for name in ROLLUP_FIELDS if name != "jobs")
ROLLUP_SUMS = {f"sum_{name}": Sum(name) for name in ROLLUP_FIELDS}


def rollups_in_range(span: DateRange) -> QuerySet[UsageDaily]:
    return UsageDaily.objects.filter(day__gte=span.start, day__lte=span.end)



@dataclass
class UsageRow:
    key: dict[str, Any]
    figures: Figures


# How each `group_by` groups roll-up rows: the fields it groups on, and the key each group shows.
USAGE_GROUPS = {
    "day": (("day",), lambda row: {"day": row["day"]}),
    "model": (("model_id",), lambda row: {"model_id": row["model_id"]}),
    "function": (("function__name", "function_id"),
                 lambda row: {"function_id": row["function_id"], "function_name": row["function__name"]}),
}


def user_usage(*, owner: User, span: DateRange, group_by: str) -> tuple[Figures, list[UsageRow]]:
    """`owner`'s usage in `span` grouped by day, model or function: the totals, and one row per group that had
    calls or jobs, ordered by the group's key (day, model id, or function name). Raises DomainError
    `invalid_group_by`."""
    if group_by not in USAGE_GROUPS:
        raise DomainError(f"`group_by` must be one of {', '.join(USAGE_GROUPS)}.", code="invalid_group_by")
    names, key_of = USAGE_GROUPS[group_by]
    groups = rollups_in_range(span).filter(owner=owner).values(*names).annotate(**ROLLUP_SUMS).order_by(*names)
    rows = [UsageRow(key_of(group), Figures.from_sums(group)) for group in groups]
    totals = Figures()
    for row in rows:
        totals.add(row.figures)
    return totals, rows
