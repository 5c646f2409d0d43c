"""The job outbox (JOB_DISPATCH=outbox, the default with PostgreSQL): a committed, queued Job row with no
`dispatched_at` is a message still to send, and a relay in every worker on PostgreSQL sends it.

In direct mode the web process publishes each job once its row commits: the broker's round trip is part of every
admission (on SQS about a quarter of its CPU, bench/admission.py), and a web process killed between the commit and
the publish leaves its job queued for ever. In outbox mode the admission adds a NOTIFY to its transaction instead
(jobs.dispatch.hand_over). PostgreSQL delivers it with the commit; each worker's relay wakes, locks the oldest
waiting rows with SKIP LOCKED (two relays never take the same job), publishes them and marks them sent, in one
transaction. A relay killed between its publish and its commit sends those jobs again later: a second message is
harmless, as a worker's claim of a job is a conditional update.

A broker that refuses a job leaves it waiting: the relay tries again every JOB_DISPATCH_POLL_SECONDS, and fails it
with `queue_unavailable` once it has waited JOB_DISPATCH_TIMEOUT seconds.

A job sent but still queued long after (`resend_unclaimed`) is sent again, whatever the dispatch mode: a worker
killed with messages in its prefetch leaves them invisible on SQS until the visibility timeout (tens of minutes),
and the filesystem broker loses them. The relays look every RESEND_LOOK_SECONDS, the beat's recovery task every
minute; the claim keeps a job from running twice.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, Error, connection, connections, transaction
from django.db.models import DateTimeField, DurationField, ExpressionWrapper, F, Value
from django.utils import timezone

from .dispatch import enqueue_job, fail_unqueued
from .fairness import job_turns, seats
from .models import Job, JobStatus, LayerStatus
from .relay_bell import OUTBOX_CHANNEL

if TYPE_CHECKING:
    from psycopg import Connection

logger = logging.getLogger(__name__)

# Jobs sent per transaction: their rows stay locked until it commits, so a worker that receives the first message
# waits for the last to be published before it can claim its job.
BATCH = 10
# How long a relay waits for a notification at a time (and so at most for its worker to stop it).
WAIT_SLICE_SECONDS = 0.5
# After the database fails, the relay connects again after this long, doubled up to RETRY_MAX_SECONDS.
RETRY_SECONDS = 0.5
RETRY_MAX_SECONDS = 5.0
# How often a relay looks for jobs sent but not taken (JOB_RESEND_AFTER_SECONDS).
RESEND_LOOK_SECONDS = 10.0


def dispatch_waiting(*, limit: int = BATCH) -> int:
    """Publish up to `limit` of the oldest queued jobs not yet sent, and mark them sent; returns how many were sent.

    When the broker refuses one, those before it stay marked, the rest wait for the next try, and those of them
    that have waited JOB_DISPATCH_TIMEOUT seconds are failed with `queue_unavailable`; then the broker's error is
    raised.
    """
    refused: Exception | None = None
    with transaction.atomic():
        waiting = list(Job.objects.select_for_update(skip_locked=True)
                       .filter(status=JobStatus.QUEUED, dispatched_at__isnull=True)
                       .order_by("created_at").values_list("pk", "queue", "created_at")[:limit])
        sent = []
        for job_id, queue, _ in waiting:
            try:
                enqueue_job(job_id, queue)
            except Exception as exc:  # the broker's client raises many types
                refused = exc
                break
            sent.append(job_id)
        if sent:
            Job.objects.filter(pk__in=sent).update(dispatched_at=timezone.now())
    if refused is None:
        return len(sent)
    oldest = timezone.now() - timedelta(seconds=settings.JOB_DISPATCH_TIMEOUT)
    for job_id, _, created_at in waiting[len(sent):]:
        if created_at < oldest:
            fail_unqueued(job_id, refused)
    raise refused


def dispatch_fairly() -> int:
    """With FAIR_SHARE: send each queue's waiting jobs as its workers have room, in fair-share order
    (jobs.fairness.job_turns); returns how many were sent. When the broker refuses one, the jobs of its queue that
    have waited JOB_DISPATCH_TIMEOUT seconds are failed with `queue_unavailable`, and the broker's error is raised."""
    try:
        return job_turns.send_fairly(enqueue_job)
    except job_turns.Refused as refused:
        oldest = timezone.now() - timedelta(seconds=settings.JOB_DISPATCH_TIMEOUT)
        for job_id in Job.objects.filter(job_turns.WAITING, queue=refused.queue,
                                         created_at__lt=oldest).values_list("pk", flat=True):
            fail_unqueued(job_id, refused.cause)
        raise refused.cause from None


def resend_unclaimed(*, limit: int = 100) -> int:
    """Send again the queued jobs sent longer ago than JOB_RESEND_AFTER_SECONDS, and than they had waited before
    being sent (so a job that waits behind a long queue is sent again at most once per doubling of its wait, not
    every look); returns how many. Jobs held for a dependency build are not sent: the build's end sends them."""
    now = timezone.now()
    with transaction.atomic():
        candidates = (Job.objects.select_for_update(skip_locked=True, of=("self",))
                      .filter(status=JobStatus.QUEUED,
                              dispatched_at__lt=now - timedelta(seconds=settings.JOB_RESEND_AFTER_SECONDS))
                      # Sent longer ago than it had waited before: decided in the query, so that jobs not yet due
                      # never fill the batch ahead of due ones.
                      .alias(waited=ExpressionWrapper(F("dispatched_at") - F("created_at"),
                                                      output_field=DurationField()))
                      .filter(dispatched_at__lt=ExpressionWrapper(Value(now) - F("waited"),
                                                                  output_field=DateTimeField()))
                      .exclude(function_version__layer__status=LayerStatus.BUILDING)
                      .order_by("dispatched_at").values_list("pk", "queue")[:limit])
        resent = []
        for job_id, queue in candidates:
            try:
                enqueue_job(job_id, queue)
            except Exception as exc:  # the broker's client raises many types: the next look tries again
                logger.warning("job %s: could not send it again: %s", job_id, exc)
                break
            resent.append(job_id)
        if resent:
            Job.objects.filter(pk__in=resent).update(dispatched_at=now)
    if resent:
        logger.warning("sent %d jobs again that no worker had taken in %s s or more (their messages may have been "
                       "held by a worker that died)", len(resent), settings.JOB_RESEND_AFTER_SECONDS)
    return len(resent)


class Relay:
    """Sends the outbox from a thread of its own: when it starts (jobs admitted while no relay ran), whenever an
    admission's (or, with fair share, a job's end's) NOTIFY arrives, and every JOB_DISPATCH_POLL_SECONDS (a
    notification lost while it reconnected, a broker that refused). It also declares its worker's `seats` (jobs run
    at once, per queue consumed), which fair share sends jobs against (jobs.fairness.seats)."""

    def __init__(self, *, worker: str = "", seats: dict[str, int] | None = None) -> None:
        self._stopping = threading.Event()
        self._resend_looked_at = 0.0
        self._worker, self._seats = worker, seats or {}
        self._declared_at = 0.0
        self._thread = threading.Thread(target=self._run, name="outbox-relay", daemon=True)

    def start(self) -> Relay:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=WAIT_SLICE_SECONDS * 4)
        if self._seats:
            try:
                seats.forget(self._worker)
            except Error as exc:  # the seats go stale by themselves
                logger.warning("outbox relay: could not forget the seats of %s: %s", self._worker, exc)
            finally:
                connection.close()

    def _run(self) -> None:
        delay = RETRY_SECONDS
        while not self._stopping.is_set():
            listener = connections.create_connection(DEFAULT_DB_ALIAS)
            try:
                listener.ensure_connection()
                listener.connection.execute(f"LISTEN {OUTBOX_CHANNEL}")
                while not self._stopping.is_set():
                    self._declare_when_due()
                    self._send_all()
                    self._resend_when_due()
                    delay = RETRY_SECONDS
                    self._wait(listener.connection)
            except Exception as exc:  # the database went away: connect again, later
                logger.warning("outbox relay: %s; connecting again in %.1f s", exc, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
            finally:
                listener.close()
                connection.close()  # this thread's own connection, which dispatch_waiting used

    def _send_all(self) -> None:
        try:
            if settings.FAIR_SHARE:
                dispatch_fairly()
                return
            while dispatch_waiting() == BATCH:
                pass
        except Error:  # the database's: the caller connects again
            raise
        except Exception as exc:  # the broker refused: the jobs wait for the next look
            logger.warning("outbox relay: the broker refused a job, trying again in %s s: %s",
                           settings.JOB_DISPATCH_POLL_SECONDS, exc)

    def _declare_when_due(self) -> None:
        if self._seats and time.monotonic() - self._declared_at >= seats.REFRESH_SECONDS:
            seats.declare(self._worker, self._seats)
            self._declared_at = time.monotonic()

    def _resend_when_due(self) -> None:
        if time.monotonic() - self._resend_looked_at < RESEND_LOOK_SECONDS:
            return
        self._resend_looked_at = time.monotonic()
        resend_unclaimed()

    def _wait(self, raw: Connection) -> None:
        """Until a notification arrives, JOB_DISPATCH_POLL_SECONDS pass, or the relay is stopped."""
        waited = 0.0
        while waited < settings.JOB_DISPATCH_POLL_SECONDS and not self._stopping.is_set():
            # Each generator is run to its end: it holds the connection's lock until then.
            if list(raw.notifies(timeout=WAIT_SLICE_SECONDS, stop_after=1)):
                # Other admissions may have committed meanwhile: the next look sends all their jobs at once.
                for _ in raw.notifies(timeout=0):
                    pass
                return
            waited += WAIT_SLICE_SECONDS
