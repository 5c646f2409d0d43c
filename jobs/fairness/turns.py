"""Whose turn it is, among the users waiting for a pool (a queue's seats, a node's call slots): the Virtual Token
Counter's choice, with the bound on how long anyone is passed over (jobs.fairness)."""
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from django.conf import settings

from billing.quotas import share_weights

from . import counters


@dataclass
class Waiter:
    """A user with work (jobs, or calls) waiting for a pool, as the choice sees them."""

    owner_id: int
    waiting: int
    oldest: datetime
    in_flight: int
    standing: counters.Standing
    weight: float
    served_at: datetime | None

    def key(self) -> float:
        """Recent service, with what the pool serves of theirs now counted at what their work costs, for the weight."""
        return (self.standing.service + self.in_flight * self.standing.per_job) / self.weight

    def head_since(self) -> datetime:
        """Since when their next job (or call) could have been served: its arrival, or their last turn."""
        return max(self.oldest, self.served_at) if self.served_at else self.oldest


def waiters(pool: str, waiting: dict[int, tuple[int, datetime]], in_flight: dict[int, int]) -> dict[int, Waiter]:
    """The users waiting for `pool`: `waiting` gives each one's count and oldest arrival, `in_flight` what the pool
    serves of theirs now."""
    standings = counters.standings(pool, waiting)
    weights = share_weights(waiting)
    found = {}
    for owner, (count, oldest) in waiting.items():
        standing = standings.get(owner, counters.NOBODY)
        found[owner] = Waiter(owner_id=owner, waiting=count, oldest=oldest, in_flight=in_flight.get(owner, 0),
                              standing=standing, weight=weights[owner], served_at=standing.served_at)
    return found


def turn(waiters: list[Waiter], *, now: datetime) -> Waiter:
    """Whose job goes next: a user passed over for FAIR_SHARE_MAX_WAIT_SECONDS (the longest first), else the user
    with the least weighted recent service (ties: the oldest job first)."""
    overdue = now - timedelta(seconds=settings.FAIR_SHARE_MAX_WAIT_SECONDS)
    late = [waiter for waiter in waiters if waiter.head_since() < overdue]
    if late:
        return min(late, key=Waiter.head_since)
    return min(waiters, key=lambda waiter: (waiter.key(), waiter.oldest))


def take_turn(waiters: dict[int, Waiter], waiter: Waiter, now: datetime) -> Waiter:
    """`waiter` had a turn at `now` (one of their jobs, or calls, is served): they are moved on, and left out of
    `waiters` once nothing of theirs waits. Returns them as they were before the turn."""
    before = replace(waiter)
    waiter.served_at, waiter.waiting, waiter.in_flight = now, waiter.waiting - 1, waiter.in_flight + 1
    if waiter.waiting == 0:
        del waiters[waiter.owner_id]
    return before
