"""Which jobs a queue's workers run next: the outbox's relays (jobs/outbox.py) send a queue's jobs only as its
workers have seats, in fair-share order (jobs.fairness).

A fill of one queue runs under a transaction-scoped advisory lock of that queue, so that the relays of several
worker hosts take turns: each counts the seats, the jobs in flight and the users' standings afresh, and two never
fill the same room. Room is the live workers' seats plus FAIR_SHARE_AHEAD, less the jobs sent and not yet ended; a
queue with no live worker keeps its jobs until one declares its seats.
"""
import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Min, Q
from django.utils import timezone

from core.postgres import lock_until_end

from .. import events, relay_bell
from ..models import Job, JobStatus, LayerStatus
from . import counters, seats
from .turns import Waiter, take_turn, turn, waiters

logger = logging.getLogger(__name__)

WAITING = Q(status=JobStatus.QUEUED, dispatched_at__isnull=True)
# Sent and not ended; a job held for its dependencies' build is marked sent but holds no seat.
IN_FLIGHT = (Q(status=JobStatus.RUNNING) | Q(status=JobStatus.QUEUED, dispatched_at__isnull=False)) & ~Q(
    function_version__layer__status=LayerStatus.BUILDING)


class Refused(Exception):
    """The broker refused a job of `queue`: those sent before it stay sent."""

    def __init__(self, queue: str, cause: Exception):
        super().__init__(str(cause))
        self.queue, self.cause = queue, cause


def in_force() -> bool:
    """Whether the relays send jobs in fair-share order: FAIR_SHARE on PostgreSQL, where the relays run."""
    return settings.FAIR_SHARE and connection.vendor == "postgresql"


def send_fairly(send: Callable[[uuid.UUID, str], None]) -> int:
    """Fill each queue that has jobs in the outbox; returns how many jobs were sent. Raises Refused when the broker
    refuses one."""
    queues = Job.objects.filter(WAITING).values_list("queue", flat=True).distinct()
    return sum(fill(queue, send) for queue in list(queues))


def fill(queue: str, send: Callable[[uuid.UUID, str], None]) -> int:
    """Send `queue`'s waiting jobs, while it has room, each time the head job of the user whose turn it is (`turn`);
    returns how many were sent."""
    sent: list[tuple[Job, Waiter]] = []
    refused: Exception | None = None
    with transaction.atomic():
        lock_until_end(f"job_turns:{queue}")
        room = room_of(queue)
        waiters = _waiters(queue) if room > 0 else {}
        turns = counters.last_turns(counters.queue_pool(queue)) if waiters else {}
        now = timezone.now()
        while room > 0 and waiters:
            waiter = turn(list(waiters.values()), now=now)
            job = _head(queue, waiter.owner_id)
            if job is None:  # taken meanwhile (a cancel)
                del waiters[waiter.owner_id]
                continue
            try:
                send(job.pk, queue)
            except Exception as exc:  # the broker's client raises many types
                refused = exc
                break
            Job.objects.filter(pk=job.pk).update(dispatched_at=now)
            sent.append((job, take_turn(waiters, waiter, now)))
            room -= 1
        if sent:
            _record_turns(queue, sent, turns, now)
    if refused is not None:
        raise Refused(queue, refused)
    return len(sent)


def job_ended(job: Job) -> None:
    """`job` reached its end: its user is charged what it cost its queue's workers, and the relays are woken to fill
    the seat it held. In the transaction of the end, so that no fill sees the seat free and the cost not yet
    counted."""
    if job.dispatched_at is None:
        return
    if job.started_at is not None:
        counters.charge(counters.queue_pool(job.queue), job.owner_id, counters.job_units(job), served=1.0)
    relay_bell.ring()


def room_of(queue: str) -> int:
    """How many more of `queue`'s jobs may be sent now."""
    capacity = seats.capacity(queue)
    if capacity == 0:
        return 0
    in_flight = Job.objects.filter(IN_FLIGHT, queue=queue).count()
    return capacity + settings.FAIR_SHARE_AHEAD - in_flight


def _waiters(queue: str) -> dict[int, Waiter]:
    waiting = {owner: (n, oldest) for owner, n, oldest in Job.objects.filter(WAITING, queue=queue).values("owner_id")
               .annotate(n=Count("pk"), oldest=Min("created_at")).order_by().values_list("owner_id", "n", "oldest")}
    flying = dict(Job.objects.filter(IN_FLIGHT, queue=queue, owner_id__in=list(waiting)).values("owner_id")
                  .annotate(n=Count("pk")).order_by().values_list("owner_id", "n"))
    return waiters(counters.queue_pool(queue), waiting, flying)


def _head(queue: str, owner_id: int) -> Job | None:
    """`owner_id`'s next job on `queue`: their synchronous runs first, then the oldest."""
    return (Job.objects.select_for_update(skip_locked=True).filter(WAITING, queue=queue, owner_id=owner_id)
            .order_by("-interactive", "created_at").only("pk", "created_at", "owner_id").first())


def _record_turns(queue: str, sent: list[tuple[Job, Waiter]], turns: dict[int, datetime], now: datetime) -> None:
    """Note each served user's turn on their counter, and tell each sent job's events how long it waited and how
    much of that it was held for fairness: as its user's next job, while other users' jobs were sent (`turns`, the
    users' last turns before this fill, and the jobs sent before it in this one)."""
    pool = counters.queue_pool(queue)
    for owner_id in {job.owner_id for job, _ in sent}:
        counters.charge(pool, owner_id, 0.0, served_at=now)
    for index, (job, waiter) in enumerate(sent):
        head_since = max(job.created_at, waiter.served_at) if waiter.served_at else job.created_at
        passed_over = (any(owner != job.owner_id and head_since < at for owner, at in turns.items())
                       or any(other.owner_id != job.owner_id for other, _ in sent[:index]))
        held_ms = round((now - head_since).total_seconds() * 1000) if passed_over else 0
        events.record(job.pk, [("queue", {"phase": "sent", "queue": queue, "heldForFairnessMs": held_ms,
                                           "waitedMs": round((now - job.created_at).total_seconds() * 1000)})])
