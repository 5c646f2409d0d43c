"""The listener's side: a job's events as a Server-Sent Events body, from a given id to the `result` event.

Each listener is one iterator served by one web thread (gunicorn's gthread workers, runserver) for as long as it
follows the job, with no time limit of its own: gunicorn's WEB_TIMEOUT watches a worker's heartbeat, not a
request, so a stream lasts as long as its job. `Listeners` bounds how many one process serves: at most
JOB_EVENTS_MAX_LISTENERS and never more than half its threads (WEB_THREADS), so that the other half always answers
the API and the probes, and at most JOB_EVENTS_MAX_PER_USER for one user; the next ones are refused with 503
(`too_many_listeners`). Between two reads a listener holds no database connection (see the stores).

A listener ends at the job's `result` event. A job whose events are gone (older than JOB_EVENTS_TTL_SECONDS, or
ended by something that wrote none) still ends its stream: once the Job row has been terminal for RESULT_GRACE
seconds without a `result` event, the row's result is sent, without an id.
"""
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import StreamingHttpResponse

from core.errors import DomainError

from ..models import Job
from ..results import execution_result
from .store import Event, EventStore

logger = logging.getLogger(__name__)

RETRY_MS = 2000  # what a browser's EventSource waits before it reconnects
STATUS_CHECK_SECONDS = 2.0
RESULT_GRACE = 10.0


def frame(kind: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    # json.dumps writes no raw newline, so the data is always one `data:` line.
    return f"{head}event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class Listeners:
    """The listeners a process serves at once: at most `limit`, and at most `per_user` of one user's."""

    def __init__(self, limit: int, per_user: int):
        self.limit = limit
        self.per_user = per_user
        self.active = 0
        self._by_user: dict[Any, int] = {}
        self._lock = threading.Lock()

    def enter(self, user: Any) -> None:
        with self._lock:
            if self.active >= self.limit:
                raise DomainError("Too many listeners on this server; try again shortly.",
                                  code="too_many_listeners", status=503)
            if self._by_user.get(user, 0) >= self.per_user:
                raise DomainError(f"You follow {self.per_user} jobs on this server already; close one first.",
                                  code="too_many_listeners", status=503, limit=self.per_user)
            self.active += 1
            self._by_user[user] = self._by_user.get(user, 0) + 1

    def leave(self, user: Any) -> None:
        with self._lock:
            self.active -= 1
            self._by_user[user] -= 1
            if not self._by_user[user]:
                del self._by_user[user]


_listeners: Listeners | None = None


def listeners() -> Listeners:
    global _listeners
    limit = min(settings.JOB_EVENTS_MAX_LISTENERS, settings.WEB_THREADS // 2)
    if _listeners is None or (_listeners.limit, _listeners.per_user) != (limit, settings.JOB_EVENTS_MAX_PER_USER):
        _listeners = Listeners(limit, settings.JOB_EVENTS_MAX_PER_USER)
    return _listeners


class EventFeed:
    """The SSE body of one listener. An iterator with `close()`: the web server closes it when the client goes
    (or after the last frame), which gives the listener's place back even if no frame was ever sent."""

    def __init__(self, job_id: str, *, store: EventStore, after: str | None, seats: Listeners, user: Any):
        self.job_id = str(job_id)
        self.user = user
        self.store = store
        self.after = after
        self._seats = seats
        self._closed = False
        self._frames = self._follow()

    def __iter__(self) -> "EventFeed":
        return self

    def __next__(self) -> bytes:
        return next(self._frames)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._frames.close()
            self._seats.leave(self.user)

    def _follow(self) -> Iterator[bytes]:
        yield f"retry: {RETRY_MS}\n: job {self.job_id}\n\n".encode()
        quiet_since = time.monotonic()
        next_check = 0.0
        terminal_since: float | None = None
        while True:
            events = self.store.read(self.job_id, after=self.after, wait=settings.JOB_EVENTS_POLL_SECONDS)
            for event in events:
                yield frame(event.kind, event.data, event.id)
                self.after = event.id
                if event.kind == "result":
                    return
            now = time.monotonic()
            if events:
                quiet_since = now
                continue
            if now >= next_check:
                next_check = now + STATUS_CHECK_SECONDS
                terminal_since = self._terminal_since(terminal_since, now)
            if terminal_since is not None and now - terminal_since >= RESULT_GRACE:
                yield self._result_from_row()
                return
            if now - quiet_since >= settings.JOB_EVENTS_KEEPALIVE_SECONDS:
                quiet_since = now
                yield b": keep-alive\n\n"

    def _terminal_since(self, known: float | None, now: float) -> float | None:
        if known is not None:
            return known
        try:
            job = Job.objects.only("status", "finished_at").get(pk=self.job_id)
        finally:
            if not connection.in_atomic_block:
                connection.close()
        if not job.is_terminal:
            return None
        # A job that ended long ago will write nothing more: its result is due at once.
        if job.finished_at is None or (time.time() - job.finished_at.timestamp()) > RESULT_GRACE:
            return now - RESULT_GRACE
        return now

    def _result_from_row(self) -> bytes:
        try:
            job = Job.objects.select_related("function_version").get(pk=self.job_id)
            return frame("result", execution_result(job))
        finally:
            if not connection.in_atomic_block:
                connection.close()


def open_feed(job: Job, *, store: EventStore, last_event_id: str | None, user: Any) -> EventFeed:
    """A feed of `job`'s events after `last_event_id`, for `user` (who asks: the job's owner, or staff). Raises
    DomainError: 400 for an id that cannot be one of this store's, 503 when the process serves as many listeners
    as it may, or as many of `user`'s (see Listeners)."""
    if last_event_id is not None and not store.is_cursor(last_event_id):
        raise DomainError("Last-Event-ID is not an event id of this server.", code="invalid_last_event_id")
    seats = listeners()
    seats.enter(user)
    return EventFeed(str(job.pk), store=store, after=last_event_id, seats=seats, user=user)


def event_stream_response(feed: EventFeed) -> StreamingHttpResponse:
    response = StreamingHttpResponse(feed, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx would otherwise hold the frames back
    return response


__all__ = ["Event", "EventFeed", "event_stream_response", "frame", "listeners", "open_feed"]
