"""The daily roll-ups of the ledger and the jobs (`UsageDaily`): what the dashboard and the usage API read.

The ledger writes each call's increments here as it records the call, and jobs count themselves as they are
created: both by direct calls in the writer's transaction, so a roll-up never disagrees with its sources.
`replace_rollups` swaps a range of days for rows recomputed from the sources (the ledger's rebuild).
"""
from collections.abc import Iterable
from datetime import date
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from core.increments import add_to

from .models import UsageDaily


def _add_to_rollup(key: dict[str, Any], increments: dict[str, Any]) -> None:
    """Add `increments` to the roll-up row of `key`: an UPDATE, and for the group's first event of the day an
    INSERT.

    Race-safe on PostgreSQL and SQLite: when two first events race, both UPDATEs match nothing, one INSERT wins and
    the other hits the unique constraint inside its own savepoint, then falls back to the UPDATE, which now matches.
    """
    if add_to(UsageDaily, key, increments):
        return
    try:
        with transaction.atomic():
            UsageDaily.objects.create(**key, **increments)
        return
    except IntegrityError:
        pass  # another event of the same group inserted the row first; add to it
    if not add_to(UsageDaily, key, increments):
        raise RuntimeError(f"roll-up row {key} neither updatable nor insertable")


def add_call_to_rollups(call: Any, *, owner_id: int, function_id: Any) -> None:
    """Add one ledger row (an `LLMCall` of job owner `owner_id`'s function `function_id`) to its day's roll-up.
    Call it in the transaction that wrote `call`, so that the ledger and its roll-ups commit together."""
    metered = call.is_metered
    increments = {
        "calls": 1,
        "failed_calls": int(call.failed),
        "unmetered_calls": int(not metered),
        "estimated_calls": int(call.estimated),
        "uncosted_calls": int(call.cost is None),
        "prompt_tokens": call.prompt_tokens if metered else 0,
        "completion_tokens": call.completion_tokens if metered else 0,
        "cost": call.cost if call.cost is not None else 0,
    }
    _add_to_rollup({"day": timezone.localdate(call.created_at), "owner_id": owner_id, "function_id": function_id,
                    "model_id": call.model_id}, {name: value for name, value in increments.items() if value})


def add_correction_to_rollups(call: Any, *, owner_id: int, function_id: Any, increments: dict[str, Any]) -> None:
    """Add `increments` (differences, possibly negative) to the roll-up of ledger row `call`'s day: a call counted
    again (jobs.metering.reconcile). Call it in the transaction that corrected the row."""
    _add_to_rollup({"day": timezone.localdate(call.created_at), "owner_id": owner_id, "function_id": function_id,
                    "model_id": call.model_id}, increments)


def add_job_to_rollups(job: Any) -> None:
    """Count a new job in its day's roll-up, under the job's own model. Call it in the transaction that creates the
    job (`jobs.services.create_job` does), so that the job and its count commit together."""
    _add_to_rollup({"day": timezone.localdate(job.created_at), "owner_id": job.owner_id,
                    "function_id": job.function_id, "model_id": job.model_id}, {"jobs": 1})


def replace_rollups(rows: Iterable[UsageDaily], *, start: date | None, end: date | None) -> tuple[int, int]:
    """Delete the roll-ups of days `start`..`end` (open ends reach the first or last day) and write `rows` in their
    place; returns (rows deleted, rows written). Run it in the transaction that computed `rows`."""
    rollups = UsageDaily.objects.all()
    if start is not None:
        rollups = rollups.filter(day__gte=start)
    if end is not None:
        rollups = rollups.filter(day__lte=end)
    deleted, _ = rollups.delete()
    written = UsageDaily.objects.bulk_create(rows, batch_size=1000)
    return deleted, len(written)
