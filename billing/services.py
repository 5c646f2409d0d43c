"""Use cases of billing: pricing a call, the daily roll-ups of the ledger, a user's usage, and the jobs export.

Costs are fixed once: `cost_of_call` prices a call when the gateway records it, with the price then in force, and
the cost is written on the ledger row. Everything downstream (a job's cost, the roll-ups, the dashboard, the API,
the CSV) adds up those fixed costs; nothing re-prices an old call.
"""
import csv
import functools
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, DecimalField, F, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from core.errors import DomainError
from jobs.models import METERED, Job, LLMCall, LLMCallStatus

from .models import COST_QUANTUM, ModelPrice, UsageDaily

logger = logging.getLogger(__name__)

# A range longer than this is refused: the dashboard draws one bar per day.
MAX_RANGE_DAYS = 3660
DEFAULT_RANGE_DAYS = 30


# --- pricing --------------------------------------------------------------------------------------------------

def price_in_force(*, model_id: str, at: datetime) -> ModelPrice | None:
    """The price of `model_id` at the moment `at`: the row with the latest `effective_from` not after it."""
    return ModelPrice.objects.filter(model_id=model_id, effective_from__lte=at).order_by("-effective_from").first()


def cost_of_call(*, model_id: str, prompt_tokens: int | None, completion_tokens: int | None,
                 at: datetime) -> Decimal | None:
    """What a call costs at the price in force at `at`; None (unknown, never zero) when either token count is
    unknown or the model has no price then."""
    if prompt_tokens is None or completion_tokens is None:
        return None
    price = price_in_force(model_id=model_id, at=at)
    if price is None:
        return None
    return price.cost_of(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def job_cost_increments(cost: Decimal | None) -> dict[str, F]:
    """What a call of cost `cost` adds to its Job row: to `cost` when known, else to `uncosted_calls`."""
    return {"cost": F("cost") + cost} if cost is not None else {"uncosted_calls": F("uncosted_calls") + 1}


# --- daily roll-ups -------------------------------------------------------------------------------------------

def _add_to_rollup(key: dict[str, Any], increments: dict[str, Any]) -> None:
    """Add `increments` to the roll-up row of `key`: an UPDATE with F(), and for the group's first event of the
    day an INSERT.

    Race-safe on PostgreSQL and SQLite: when two first events race, both UPDATEs match nothing, one INSERT wins and
    the other hits the unique constraint inside its own savepoint, then falls back to the UPDATE, which now matches.
    """
    bump = {name: F(name) + value for name, value in increments.items()}
    if UsageDaily.objects.filter(**key).update(**bump):
        return
    try:
        with transaction.atomic():
            UsageDaily.objects.create(**key, **increments)
        return
    except IntegrityError:
        pass  # another event of the same group inserted the row first; add to it
    if not UsageDaily.objects.filter(**key).update(**bump):
        raise RuntimeError(f"roll-up row {key} neither updatable nor insertable")


@functools.lru_cache(maxsize=4096)
def _job_owner_and_function(job_id: Any) -> tuple[int, Any]:
    """A job's owner and function never change: read once per job and process, not once per call."""
    return Job.objects.filter(pk=job_id).values_list("owner_id", "function_id").get()


def add_call_to_rollups(call: LLMCall) -> None:
    """Add one ledger row to its day's roll-up. Call it in the transaction that wrote `call`, so that the ledger
    and its roll-ups commit together."""
    owner_id, function_id = _job_owner_and_function(call.job_id)
    metered = call.is_metered
    increments = {
        "calls": 1,
        "failed_calls": int(call.status == LLMCallStatus.ERROR),
        "unmetered_calls": int(not metered),
        "uncosted_calls": int(call.cost is None),
        "prompt_tokens": call.prompt_tokens if metered else 0,
        "completion_tokens": call.completion_tokens if metered else 0,
        "cost": call.cost if call.cost is not None else 0,
    }
    _add_to_rollup({"day": timezone.localdate(call.created_at), "owner_id": owner_id, "function_id": function_id,
                    "model_id": call.model_id}, {name: value for name, value in increments.items() if value})


def add_job_to_rollups(job: Job) -> None:
    """Count a new job in its day's roll-up, under the job's own model. billing.apps connects it to Job's
    post_save, so every way of creating a job counts (bulk_create does not send the signal: rebuild after it)."""
    _add_to_rollup({"day": timezone.localdate(job.created_at), "owner_id": job.owner_id,
                    "function_id": job.function_id, "model_id": job.model_id}, {"jobs": 1})


# Sums over ledger rows, named as Figures.from_sums reads them ("sum_" + the roll-up field).
LEDGER_SUMS = {
    "sum_calls": Count("id"),
    "sum_failed_calls": Count("id", filter=Q(status=LLMCallStatus.ERROR)),
    "sum_unmetered_calls": Count("id", filter=~METERED),
    "sum_uncosted_calls": Count("id", filter=Q(cost__isnull=True)),
    "sum_prompt_tokens": Coalesce(Sum("prompt_tokens", filter=METERED), 0),
    "sum_completion_tokens": Coalesce(Sum("completion_tokens", filter=METERED), 0),
    "sum_cost": Coalesce(Sum("cost"), Value(Decimal(0)), output_field=DecimalField(max_digits=24, decimal_places=10)),
}


def _lock_sources() -> None:
    """Keep new calls and jobs out until the transaction ends, so a rebuild sees them as they are at one moment.

    PostgreSQL: SHARE mode blocks writes to the ledger and to jobs (the gateway and the workers wait) but not
    reads. SQLite: the DELETE that follows takes the database's single write lock, which does the same; there a
    writer gives up after the connection's timeout (20 s), so a long rebuild is best done range by range.
    """
    if connection.vendor == "postgresql":
        tables = ", ".join(connection.ops.quote_name(model._meta.db_table) for model in (LLMCall, Job))
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {tables} IN SHARE MODE")


def _in_days(queryset: QuerySet, start: date | None, end: date | None) -> QuerySet:
    if start is not None:
        queryset = queryset.filter(created_at__gte=day_start(start))
    if end is not None:
        queryset = queryset.filter(created_at__lt=day_start(end + timedelta(days=1)))
    return queryset


def rebuild_rollups(*, start: date | None = None, end: date | None = None) -> int:
    """Recompute the roll-ups of days `start`..`end` (inclusive; open ends reach the first or last day) from the
    ledger and the Job rows, in one transaction; returns how many roll-up rows were written.

    Calls and jobs wait while it runs (see _lock_sources), so the result is exact even on a live system.
    """
    with transaction.atomic():
        _lock_sources()
        rollups = UsageDaily.objects.all()
        if start is not None:
            rollups = rollups.filter(day__gte=start)
        if end is not None:
            rollups = rollups.filter(day__lte=end)
        deleted, _ = rollups.delete()
        rows: dict[tuple, UsageDaily] = {}

        def row(day: date, owner_id: int, function_id: Any, model_id: str) -> UsageDaily:
            key = (day, owner_id, function_id, model_id)
            if key not in rows:
                rows[key] = UsageDaily(day=day, owner_id=owner_id, function_id=function_id, model_id=model_id)
            return rows[key]

        calls = (_in_days(LLMCall.objects.all(), start, end).annotate(day=TruncDate("created_at"))
                 .values("day", "model_id", owner=F("job__owner_id"), function=F("job__function_id"))
                 .annotate(**LEDGER_SUMS).order_by())
        for group in calls:
            target = row(group["day"], group["owner"], group["function"], group["model_id"])
            for name in CALL_FIELDS:
                setattr(target, name, group[f"sum_{name}"])
        jobs = (_in_days(Job.objects.all(), start, end).annotate(day=TruncDate("created_at"))
                .values("day", "owner_id", "function_id", "model_id").annotate(count=Count("id")).order_by())
        for group in jobs:
            row(group["day"], group["owner_id"], group["function_id"], group["model_id"]).jobs = group["count"]
        UsageDaily.objects.bulk_create(rows.values(), batch_size=1000)
    logger.info("rebuilt usage roll-ups %s..%s: %d rows replaced by %d", start or "first day", end or "last day",
                deleted, len(rows))
    return len(rows)


# --- date ranges ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DateRange:
    """Days `start`..`end`, both included, in the server's TIME_ZONE."""

    start: date
    end: date

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def each_day(self) -> Iterator[date]:
        for offset in range(self.days):
            yield self.start + timedelta(days=offset)


def day_start(day: date) -> datetime:
    """The first moment of `day` in the current time zone."""
    return timezone.make_aware(datetime.combine(day, time.min))


def parse_day(raw: str, name: str) -> date:
    """A day written YYYY-MM-DD; raises DomainError `invalid_date` otherwise."""
    try:
        if len(raw) != 10:
            raise ValueError
        return date.fromisoformat(raw)
    except ValueError:
        raise DomainError(f"`{name}` must be a date written YYYY-MM-DD, got {raw[:40]!r}.",
                          code="invalid_date") from None


def parse_range(*, start: str | None, end: str | None) -> DateRange:
    """The range asked for by `from` and `to` (YYYY-MM-DD, both included); by default the 30 days up to today.

    Raises DomainError `invalid_date` for a malformed date and `invalid_range` when `from` is after `to` or the
    range is longer than MAX_RANGE_DAYS.
    """
    end_day = parse_day(end, "to") if end else None
    start_day = parse_day(start, "from") if start else None
    if end_day is None:
        end_day = max(timezone.localdate(), start_day) if start_day else timezone.localdate()
    if start_day is None:
        start_day = end_day - timedelta(days=DEFAULT_RANGE_DAYS - 1)
    if start_day > end_day:
        raise DomainError(f"`from` ({start_day}) is after `to` ({end_day}).", code="invalid_range")
    span = DateRange(start_day, end_day)
    if span.days > MAX_RANGE_DAYS:
        raise DomainError(f"The range is {span.days} days long; the longest is {MAX_RANGE_DAYS}.",
                          code="invalid_range")
    return span


def range_from_query(query: Mapping[str, str]) -> DateRange:
    """The range a request asks for with its `from` and `to` parameters (an empty one counts as absent); raises
    as `parse_range` does."""
    return parse_range(start=query.get("from") or None, end=query.get("to") or None)


def jobs_in_range(span: DateRange, *, owner: User | None = None) -> QuerySet[Job]:
    """Jobs created in `span`; only `owner`'s when given."""
    jobs = _in_days(Job.objects.all(), span.start, span.end)
    return jobs.filter(owner=owner) if owner is not None else jobs


# --- figures --------------------------------------------------------------------------------------------------

@dataclass
class Figures:
    """Usage of some group over a range: sums of roll-up rows."""

    calls: int = 0
    failed_calls: int = 0
    unmetered_calls: int = 0
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


# --- a user's usage (the API) ---------------------------------------------------------------------------------

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


# --- the jobs export (CSV) ------------------------------------------------------------------------------------

CSV_COLUMNS = ["job_id", "created_at", "owner", "function_id", "function_name", "model_id", "status", "duration_ms",
               "llm_calls", "unmetered_calls", "uncosted_calls", "prompt_tokens", "completion_tokens",
               "total_tokens", "cost", "currency"]


class _Echo:
    """A file that hands back what is written to it, so csv.writer can feed a streaming response line by line."""

    def write(self, value: str) -> str:
        return value


def _text_cell(value: str) -> str:
    """A user-chosen text (a function's name) that a spreadsheet would run as a formula is quoted."""
    return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def jobs_csv_lines(jobs: QuerySet[Job], *, currency: str) -> Iterable[str]:
    """The jobs as CSV lines (header first), oldest first: tokens and cost (the sum of the calls' known costs;
    `uncosted_calls` says how many calls it leaves out)."""
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    rows = (jobs.order_by("created_at", "id")
            .values_list("id", "created_at", "owner__username", "function_id", "function__name", "model_id",
                         "status", "duration_ms", "llm_calls", "unmetered_calls", "uncosted_calls", "prompt_tokens",
                         "completion_tokens", "cost"))
    for (job_id, created_at, owner, function_id, function_name, model_id, status, duration_ms, llm_calls,
         unmetered_calls, uncosted_calls, prompt_tokens, completion_tokens, cost) in rows.iterator(chunk_size=2000):
        yield writer.writerow([
            job_id, created_at.isoformat(), _text_cell(owner), function_id, _text_cell(function_name), model_id,
            status, "" if duration_ms is None else duration_ms, llm_calls, unmetered_calls, uncosted_calls,
            prompt_tokens, completion_tokens, prompt_tokens + completion_tokens,
            format(Decimal(cost).quantize(COST_QUANTUM), "f"), currency,
        ])
