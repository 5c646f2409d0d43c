"""Ranges of days, as the dashboard, the usage API and the CSV exports take them (`from`, `to`, both included)."""
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.db.models import QuerySet
from django.utils import timezone

from .errors import DomainError

# A range longer than this is refused: the dashboard draws one bar per day.
MAX_RANGE_DAYS = 3660
DEFAULT_RANGE_DAYS = 30


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


def range_from_query(query: Mapping[str, str], *, blank_is_absent: bool = True) -> DateRange:
    """The range a request asks for with its `from` and `to` parameters; raises as `parse_range` does.

    A blank one counts as absent for the admin's forms; the API (`blank_is_absent=False`) refuses it as
    `invalid_date`, as its schema says a date is required when the parameter is given.
    """
    start, end = query.get("from"), query.get("to")
    if blank_is_absent:
        return parse_range(start=start or None, end=end or None)
    return parse_range(start=_given(start, "from"), end=_given(end, "to"))


def _given(raw: str | None, name: str) -> str | None:
    if raw == "":
        raise DomainError(f"`{name}` must be a date written YYYY-MM-DD, got ''.", code="invalid_date")
    return raw


def created_in_days(queryset: QuerySet, start: date | None, end: date | None) -> QuerySet:
    """The rows of `queryset` whose `created_at` falls on days `start`..`end` (an open end reaches any day)."""
    if start is not None:
        queryset = queryset.filter(created_at__gte=day_start(start))
    if end is not None:
        queryset = queryset.filter(created_at__lt=day_start(end + timedelta(days=1)))
    return queryset
