"""A node's limit on model calls at once (AINode.max_concurrent_calls), held across every worker of the node: a
call past it waits for one of the node's slots, and the slots are handed on in fair-share order, by the same turn
as jobs (jobs.fairness.job_turns.turn) over the users whose calls wait, with the node's own counters.

The slots are rows (`CallTicket`): a waiting call inserts one, and whoever frees a slot, or finds one free, grants
the waiting tickets under an advisory lock of the node, charges each granted call's prompt to its user, and rings
the `call_slots` channel; the waiters LISTEN on it (SQLite, which has no NOTIFY, looks every POLL_SECONDS). A call's
end charges what it generated and frees its slot. A ticket outlives its call only when its worker died; one older
than the call timeout (and a minute), or of a job that no longer runs, is dropped at the next grant.

The database work of a call is done on the gateway's request thread, with that thread's own connection, closed when
the call ends (the thread ends with its connection to the script).
"""
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Min
from django.utils import timezone

from core.postgres import lock_until_end, notify_on_commit

from ..models import CallTicket, JobStatus
from . import counters
from .turns import Waiter, take_turn, turn, waiters

logger = logging.getLogger(__name__)

CHANNEL = "call_slots"
POLL_SECONDS = 0.05
LISTEN_SLICE_SECONDS = 0.25


class SlotWaitEnded(Exception):
    """The call stopped waiting for a slot: `code` is `call_dropped` (nobody wants its answer any more) or
    `node_busy` (it waited as long as it may)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class Slot:
    """One call's hold on a slot of its node (or on nothing, for a node without a limit)."""

    node: str = ""
    ticket_id: int | None = None
    owner_id: int = 0
    units: float = 0.0
    waited_ms: int = 0
    limit: int = 0
    released: bool = False

    def release(self, *, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """Free the slot and charge what the call cost beyond the prompt charged at its grant. Idempotent."""
        if self.ticket_id is None or self.released:
            return
        self.released = True
        extra = counters.token_units(prompt_tokens, completion_tokens) - self.units
        try:
            with transaction.atomic():
                CallTicket.objects.filter(pk=self.ticket_id).delete()
                if extra > 0:
                    counters.charge(counters.node_pool(self.node), self.owner_id, extra)
            grant(self.node, self.limit)
        except Exception:  # the slot is freed by the next grant's sweep, when its job has ended
            logger.exception("node %s: could not free a call slot", self.node)
        finally:
            connection.close()


UNLIMITED = Slot()


class CallSlots:
    """One job's way to its nodes' slots (given to its gateway): `limits` are the nodes' max_concurrent_calls."""

    def __init__(self, *, job_id: str, owner_id: int, interactive: bool, limits: dict[str, int]):
        self.job_id, self.owner_id, self.interactive = job_id, owner_id, interactive
        self.limits = {node: limit for node, limit in limits.items() if limit}

    def take(self, node: str, *, prompt_tokens: int, wait: float, abandon: Callable[[], bool]) -> Slot:
        """A slot of `node` for one call with a prompt of `prompt_tokens`: at once when the node has no limit or a
        slot is free, else when it is this call's turn. Raises SlotWaitEnded when `abandon()` turns true (checked
        every fraction of a second) or `wait` seconds pass."""
        limit = self.limits.get(node)
        if limit is None:
            return UNLIMITED
        started = time.monotonic()
        units = counters.token_units(prompt_tokens, 0)
        ticket = CallTicket.objects.create(node=node, owner_id=self.owner_id, job_id=self.job_id,
                                           interactive=self.interactive, units=units)
        slot = Slot(node=node, ticket_id=ticket.pk, owner_id=self.owner_id, units=units, limit=limit)
        try:
            _wait_for_grant(slot, started + wait, abandon)
        except BaseException:
            slot.release()
            raise
        slot.waited_ms = round((time.monotonic() - started) * 1000)
        return slot


def grant(node: str, limit: int) -> int:
    """Grant `node`'s free slots to the waiting calls whose turn it is; returns how many were granted."""
    with transaction.atomic():
        lock_until_end(f"call_slots:{node}")
        _sweep(node)
        free = limit - CallTicket.objects.filter(node=node, granted_at__isnull=False).count()
        waiters = _waiters(node) if free > 0 else {}
        now = timezone.now()
        granted = 0
        while free > 0 and waiters:
            waiter = turn(list(waiters.values()), now=now)
            ticket = (CallTicket.objects.filter(node=node, owner_id=waiter.owner_id, granted_at__isnull=True)
                      .order_by("-interactive", "created_at").first())
            CallTicket.objects.filter(pk=ticket.pk).update(granted_at=now)
            counters.charge(counters.node_pool(node), waiter.owner_id, ticket.units, served=1.0, served_at=now)
            take_turn(waiters, waiter, now)
            free -= 1
            granted += 1
        if granted:
            notify_on_commit(CHANNEL)
    return granted


def _wait_for_grant(slot: Slot, deadline: float, abandon: Callable[[], bool]) -> None:
    listening = connection.vendor == "postgresql"
    if listening:
        connection.ensure_connection()
        connection.connection.execute(f"LISTEN {CHANNEL}")
    while True:
        grant(slot.node, slot.limit)
        if CallTicket.objects.filter(pk=slot.ticket_id, granted_at__isnull=False).exists():
            return
        if abandon():
            raise SlotWaitEnded("call_dropped", "The job ended or the script hung up.")
        left = deadline - time.monotonic()
        if left <= 0:
            raise SlotWaitEnded("node_busy", f"The node's {slot.limit} call slots stayed taken; try again later.")
        if listening:
            # Each generator is run to its end: it holds the connection's lock until then.
            list(connection.connection.notifies(timeout=min(left, LISTEN_SLICE_SECONDS), stop_after=1))
        else:
            time.sleep(min(left, POLL_SECONDS))


def _sweep(node: str) -> None:
    """Drop the tickets that outlived their call: a dead worker's, and those of jobs that no longer run."""
    stale = timezone.now() - timedelta(seconds=settings.AI_CALL_TIMEOUT + 60)
    tickets = CallTicket.objects.filter(node=node)
    tickets.filter(created_at__lt=stale).delete()
    tickets.exclude(job__status=JobStatus.RUNNING).delete()


def _waiters(node: str) -> dict[int, Waiter]:
    tickets = CallTicket.objects.filter(node=node)
    waiting = {owner: (n, oldest) for owner, n, oldest in tickets.filter(granted_at__isnull=True).values("owner_id")
               .annotate(n=Count("pk"), oldest=Min("created_at")).order_by().values_list("owner_id", "n", "oldest")}
    holding = dict(tickets.filter(granted_at__isnull=False, owner_id__in=list(waiting)).values("owner_id")
                   .annotate(n=Count("pk")).order_by().values_list("owner_id", "n"))
    return waiters(counters.node_pool(node), waiting, holding)
