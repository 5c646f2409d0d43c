"""The rebuild of the daily roll-ups from their sources: the ledger's calls and the jobs.

Both sources belong to the jobs app, which billing does not import: jobs registers them when it starts
(`register_sources`, from jobs.apps), as grouped queries billing knows only by their shape.
"""
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from django.db import transaction

from .models import UsageDaily
from .reports import CALL_FIELDS
from .rollups import replace_rollups

logger = logging.getLogger(__name__)

Days = tuple[date | None, date | None]


@dataclass(frozen=True)
class RollupSources:
    """Where the roll-ups come from. Each query takes the days `start`..`end` (open ends reach the first or last
    day) and answers one dict per (day, owner, function, model) group."""

    # Keeps new calls and jobs out until the transaction ends, so a rebuild sees them as they are at one moment.
    lock: Callable[[], None]
    # Groups with "day", "owner_id", "function_id", "model_id" and "sum_<field>" for each of reports.CALL_FIELDS.
    calls: Callable[[date | None, date | None], Iterable[dict[str, Any]]]
    # Groups with "day", "owner_id", "function_id", "model_id" and "count" (jobs created).
    jobs: Callable[[date | None, date | None], Iterable[dict[str, Any]]]


_sources: list[RollupSources] = []


def register_sources(sources: RollupSources) -> None:
    _sources[:] = [sources]


def rebuild_rollups(*, start: date | None = None, end: date | None = None) -> int:
    """Recompute the roll-ups of days `start`..`end` (inclusive; open ends reach the first or last day) from the
    registered sources, in one transaction; returns how many roll-up rows were written.

    Calls and jobs wait while it runs (the sources' lock), so the result is exact even on a live system.
    """
    if not _sources:
        raise RuntimeError("no roll-up sources registered (the jobs app registers them when it starts)")
    sources = _sources[0]
    with transaction.atomic():
        sources.lock()
        rows: dict[tuple, UsageDaily] = {}

        def row(group: dict[str, Any]) -> UsageDaily:
            key = (group["day"], group["owner_id"], group["function_id"], group["model_id"])
            if key not in rows:
                rows[key] = UsageDaily(day=key[0], owner_id=key[1], function_id=key[2], model_id=key[3])
            return rows[key]

        for group in sources.calls(start, end):
            target = row(group)
            for name in CALL_FIELDS:
                setattr(target, name, group[f"sum_{name}"])
        for group in sources.jobs(start, end):
            row(group).jobs = group["count"]
        deleted, written = replace_rollups(rows.values(), start=start, end=end)
    logger.info("rebuilt usage roll-ups %s..%s: %d rows replaced by %d", start or "first day", end or "last day",
                deleted, written)
    return written
