"""The usage export: each model call and each job's total, as a CloudEvents 1.0 JSON event, to the operator's
billing system (USAGE_EXPORT_URL). The event's `id` is stable (`llmcall-<ledger row>`, `job-<job id>`): delivered at
least once, it is deduplicated by the receiver, which so sees each once. The events of one user form one stream,
delivered in the order they were recorded (outbound.delivery). What a call and a job say is built by jobs
(jobs.usage_export) and handed over here; this app reads no ledger."""
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from .models import Destination, Event, EventStatus
from .services import write

CALL_TYPE = "com.infra-ainode.llm.call"
JOB_TYPE = "com.infra-ainode.job.usage"
SOURCE = "/infra-ainode"
BACKFILL_BATCH = 500


@dataclass(frozen=True)
class Usage:
    """One usage record to export."""

    owner_id: int
    event_id: str
    event_type: str
    time: datetime
    data: dict[str, Any]


def enabled() -> bool:
    return bool(settings.USAGE_EXPORT_URL)


def stream_of(owner_id: int) -> str:
    return f"export:{owner_id}"


def _row(usage: Usage) -> Event:
    payload = {"specversion": "1.0", "id": usage.event_id, "source": SOURCE, "type": usage.event_type,
               "subject": str(usage.owner_id), "time": usage.time.isoformat(), "datacontenttype": "application/json",
               "data": usage.data}
    return Event(event_id=usage.event_id, event_type=usage.event_type, destination=Destination.EXPORT,
                 owner_id=usage.owner_id, stream=stream_of(usage.owner_id), payload=payload,
                 next_attempt_at=timezone.now())


def record(usage: Callable[[], Usage]) -> None:
    """Export `usage()` (made only when the export is on); call it in the transaction that wrote what it reports."""
    if enabled():
        write([_row(usage())])


def backfill(records: Iterable[Usage], *, again: bool = False) -> tuple[int, int]:
    """Add the export events of `records` that were never recorded (a unique constraint keeps the others out); with
    `again`, also send the recorded ones once more. Returns (added, sent again). The sweep delivers them."""
    added = again_count = 0
    batch: list[Usage] = []
    for usage in records:
        batch.append(usage)
        if len(batch) == BACKFILL_BATCH:
            added, again_count = _add(batch, again, added, again_count)
            batch = []
    if batch:
        added, again_count = _add(batch, again, added, again_count)
    return added, again_count


def _add(batch: list[Usage], again: bool, added: int, again_count: int) -> tuple[int, int]:
    ids = [usage.event_id for usage in batch]
    known = Event.objects.filter(destination=Destination.EXPORT, event_id__in=ids)
    existing = set(known.values_list("event_id", flat=True))
    Event.objects.bulk_create([_row(u) for u in batch if u.event_id not in existing], ignore_conflicts=True)
    added += len(ids) - len(existing)
    if again and existing:
        again_count += known.exclude(status=EventStatus.PENDING).update(
            status=EventStatus.PENDING, attempts=0, next_attempt_at=timezone.now(), delivered_at=None)
    return added, again_count
