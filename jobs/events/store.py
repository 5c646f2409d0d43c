"""Where a job's live events are kept: the JobEvent table (the embedded default) or Redis streams (REDIS_URL).

Both stores give each event an id that a listener hands back as `Last-Event-ID` to resume right after it: the
table numbers a job's events 1, 2, 3… with no gaps, in commit order; Redis gives a stream id ("1732870000000-0").
Writers are the worker (in batches, see `writer.EventWriter`) and the web process (queued, a cancel); readers are
the listeners of `feed.follow`, which poll and never keep a database connection between two polls.
"""
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from django.conf import settings
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import Max
from django.utils import timezone

from core.inserts import insert

from ..models import JobEvent

logger = logging.getLogger(__name__)

READ_BATCH = 500
APPEND_ATTEMPTS = 5


@dataclass(frozen=True)
class Event:
    """One stored event. `id` is the SSE id a listener resumes after."""

    id: str
    kind: str
    data: dict[str, Any]


class EventStore(Protocol):
    def append(self, job_id: str, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Add `events` (kind, data) after the job's last ones, in order."""

    def start(self, job_id: str, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Add a job's first `events`, in the transaction that creates the job (no one else can write its events
        before it commits)."""

    def read(self, job_id: str, *, after: str | None, wait: float) -> list[Event]:
        """The job's events after `after` (all when None), oldest first; waits up to `wait` s when there are none."""

    def is_cursor(self, value: str) -> bool:
        """Whether `value` can be an id of this store (a Last-Event-ID is checked before it is used)."""


class DatabaseEventStore:
    """Events as JobEvent rows. A listener polls every JOB_EVENTS_POLL_SECONDS and closes its connection between
    polls, so a thousand idle listeners hold no database connection."""

    def append(self, job_id: str, events: list[tuple[str, dict[str, Any]]]) -> None:
        if not events:
            return
        for attempt in range(1, APPEND_ATTEMPTS + 1):
            try:
                self._insert(job_id, events)
                return
            except (IntegrityError, OperationalError) as exc:
                # Two writers of one job (the worker and a cancel in the web) took the same number: the loser
                # numbers again after the winner's rows. SQLite may also report its lock as busy.
                if attempt == APPEND_ATTEMPTS:
                    raise
                logger.info("job %s: events numbered again (%s)", job_id, exc)
                time.sleep(0.05 * attempt)

    def start(self, job_id: str, events: list[tuple[str, dict[str, Any]]]) -> None:
        # Numbered from 1, in the caller's transaction: no savepoint and no numbering query.
        now = timezone.now()
        for seq, (kind, payload) in enumerate(events, start=1):
            insert(JobEvent(job_id=job_id, seq=seq, kind=kind, data=payload, created_at=now))

    def _insert(self, job_id: str, events: list[tuple[str, dict[str, Any]]]) -> None:
        table = connection.ops.quote_name(JobEvent._meta.db_table)
        data = "CAST(%s AS jsonb)" if connection.vendor == "postgresql" else "%s"
        # One statement computes the number and writes the row: on SQLite a transaction that reads first may not
        # get the write lock later, and on PostgreSQL two writers that pick the same number collide on the unique
        # (job, seq) constraint instead of leaving a gap or a duplicate.
        sql = (f"INSERT INTO {table} (job_id, seq, kind, data, created_at) "
               f"SELECT %s, COALESCE(MAX(seq), 0) + 1, %s, {data}, %s FROM {table} WHERE job_id = %s")
        job_pk = JobEvent._meta.get_field("job").get_db_prep_value(job_id, connection)
        now = JobEvent._meta.get_field("created_at").get_db_prep_value(timezone.now(), connection)
        with transaction.atomic(), connection.cursor() as cursor:
            for kind, payload in events:
                cursor.execute(sql, [job_pk, kind, json.dumps(payload), now, job_pk])

    def read(self, job_id: str, *, after: str | None, wait: float) -> list[Event]:
        after_seq = int(after) if after else 0
        deadline = time.monotonic() + wait
        while True:
            try:
                rows = list(JobEvent.objects.filter(job_id=job_id, seq__gt=after_seq).order_by("seq")
                            .values_list("seq", "kind", "data")[:READ_BATCH])
            finally:
                # A listener may follow a job for minutes: it must not hold a connection while it sleeps. (Inside
                # a transaction, as in a test case, the connection is not ours to close.)
                if not connection.in_atomic_block:
                    connection.close()
            if rows or time.monotonic() >= deadline:
                return [Event(str(seq), kind, data) for seq, kind, data in rows]
            time.sleep(min(settings.JOB_EVENTS_POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def is_cursor(self, value: str) -> bool:
        return value.isascii() and value.isdigit() and len(value) < 10

    def prune(self, *, older_than: timedelta) -> int:
        """Delete the events of jobs whose newest event is older than `older_than`; returns how many rows went."""
        cutoff = timezone.now() - older_than
        stale_jobs = (JobEvent.objects.values("job_id").order_by().annotate(newest=Max("created_at"))
                      .filter(newest__lt=cutoff).values("job_id"))
        deleted, _ = JobEvent.objects.filter(job_id__in=stale_jobs).delete()
        return deleted


REDIS_ID = re.compile(r"\d{1,20}-\d{1,20}")  # whole: matched with fullmatch (`$` lets a final newline by)


class RedisEventStore:
    """Events as one Redis stream per job (`events:{jobId}`), expiring JOB_EVENTS_TTL_SECONDS after its last
    write. A listener blocks in XREAD (on a Redis connection, not a database one) instead of polling."""

    def __init__(self, url: str):
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=None, socket_connect_timeout=2)

    @staticmethod
    def key(job_id: str) -> str:
        return f"events:{job_id}"

    def append(self, job_id: str, events: list[tuple[str, dict[str, Any]]]) -> None:
        if not events:
            return
        pipe = self._redis.pipeline(transaction=True)
        for kind, payload in events:
            pipe.xadd(self.key(job_id), {"kind": kind, "data": json.dumps(payload)})
        pipe.expire(self.key(job_id), settings.JOB_EVENTS_TTL_SECONDS)
        pipe.execute()

    def start(self, job_id: str, events: list[tuple[str, dict[str, Any]]]) -> None:
        self.append(job_id, events)

    def read(self, job_id: str, *, after: str | None, wait: float) -> list[Event]:
        block = max(1, int(wait * 1000))
        answer = self._redis.xread({self.key(job_id): after or "0-0"}, count=READ_BATCH, block=block)
        events: list[Event] = []
        for _, entries in answer or []:
            for entry_id, fields in entries:
                events.append(Event(entry_id.decode(), fields[b"kind"].decode(), json.loads(fields[b"data"])))
        return events

    def is_cursor(self, value: str) -> bool:
        return bool(REDIS_ID.fullmatch(value))

    def prune(self, *, older_than: timedelta) -> int:
        return 0  # each stream expires by itself


_stores: dict[str, EventStore] = {}


def event_store() -> EventStore:
    """The store in use: Redis streams when REDIS_URL is set, else the database. One per process and URL."""
    url = settings.REDIS_URL
    if url not in _stores:
        _stores[url] = RedisEventStore(url) if url else DatabaseEventStore()
    return _stores[url]
