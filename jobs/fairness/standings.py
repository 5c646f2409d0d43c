"""Fair share as it stands now, pool by pool (a queue's workers, a node's call slots): each user with work waiting
or in flight there, or recent service from it, and their share of that service. The admin's Fair share page shows
it, and /metrics exports it at each scrape: a few grouped queries, whatever the number of jobs."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from billing.quotas import share_weights
from models_catalog.models import AINode

from ..models import CallTicket, Job, ServiceCounter, WorkerSeats
from . import counters, seats
from .job_turns import IN_FLIGHT, WAITING

QUEUE, NODE = "queue", "node"
# Recent service below this many units is none: counters are never deleted, they only decay.
VISIBLE_UNITS = 0.01
# A counter untouched for this many half-lives has shrunk 2**40-fold, below VISIBLE_UNITS unless it once held
# ten billion units: it is not read at all, so that the read stays on the last hours' rows.
FORGOTTEN_HALF_LIVES = 40


@dataclass
class UserStanding:
    """One user in one pool. For a queue, `waiting` and `in_flight` count jobs (waiting to be sent; sent and not
    ended); for a node, model calls (waiting for a slot; holding one). `service` is their recent service in units,
    decayed to now; `share` is its part of the pool's (0 to 1)."""

    owner_id: int
    username: str = ""
    waiting: int = 0
    in_flight: int = 0
    service: float = 0.0
    weight: float = 1.0
    share: float = 0.0


@dataclass
class PoolStanding:
    """One pool and its users, the biggest share first. A queue's pool has `seats` (its live workers') and the
    `nodes` whose workers consume it; a node's has `limit` (its max_concurrent_calls, None: no limit) and `queue`."""

    pool: str
    kind: str
    name: str
    users: list[UserStanding]
    seats: int | None = None
    nodes: list[str] = field(default_factory=list)
    limit: int | None = None
    queue: str = ""

    @property
    def waiting(self) -> int:
        return sum(user.waiting for user in self.users)

    @property
    def in_flight(self) -> int:
        return sum(user.in_flight for user in self.users)

    @property
    def service(self) -> float:
        return sum(user.service for user in self.users)


def pool_standings(*, now: datetime | None = None) -> list[PoolStanding]:
    """Every pool with work waiting or in flight, or a user's recent service above VISIBLE_UNITS; queues first."""
    now = now or timezone.now()
    cells: dict[tuple[str, int], UserStanding] = {}

    def cell(pool: str, owner_id: int) -> UserStanding:
        return cells.setdefault((pool, owner_id), UserStanding(owner_id))

    for queue, owner_id, jobs in _per_queue_and_owner(Job.objects.filter(WAITING)):
        cell(counters.queue_pool(queue), owner_id).waiting = jobs
    for queue, owner_id, jobs in _per_queue_and_owner(Job.objects.filter(IN_FLIGHT)):
        cell(counters.queue_pool(queue), owner_id).in_flight = jobs
    for node, owner_id, waiting, holding in _calls():
        standing = cell(counters.node_pool(node), owner_id)
        standing.waiting, standing.in_flight = waiting, holding
    for pool, owner_id, units in _recent_service(now):
        cell(pool, owner_id).service = units
    _name_and_weigh(cells.values())

    by_pool: dict[str, list[UserStanding]] = {}
    for (pool, _), standing in cells.items():
        by_pool.setdefault(pool, []).append(standing)
    pools = [_pool(pool, users) for pool, users in by_pool.items()]
    _describe(pools, now)
    return sorted(pools, key=lambda pool: (pool.kind != QUEUE, pool.name))


def _per_queue_and_owner(jobs: QuerySet[Job]) -> QuerySet:
    return jobs.values("queue", "owner_id").annotate(n=Count("pk")).order_by().values_list("queue", "owner_id", "n")


def _calls() -> QuerySet:
    return (CallTicket.objects.values("node", "owner_id")
            .annotate(waiting=Count("pk", filter=Q(granted_at__isnull=True)),
                      holding=Count("pk", filter=Q(granted_at__isnull=False)))
            .order_by().values_list("node", "owner_id", "waiting", "holding"))


def _recent_service(now: datetime) -> Iterator[tuple[str, int, float]]:
    """Each counter's service decayed to `now` (counters.decay, as counters.standings does), when above
    VISIBLE_UNITS: one query for every pool, where counters.standings reads one pool."""
    since = now - timedelta(seconds=settings.FAIR_SHARE_HALF_LIFE_SECONDS * FORGOTTEN_HALF_LIVES)
    rows = ServiceCounter.objects.filter(updated_at__gte=since).values_list("pool", "owner_id", "service", "updated_at")
    for pool, owner_id, service, updated_at in rows:
        units = service * counters.decay(updated_at, now)
        if units > VISIBLE_UNITS:
            yield pool, owner_id, units


def _name_and_weigh(cells: Iterable[UserStanding]) -> None:
    standings = list(cells)
    owner_ids = {standing.owner_id for standing in standings}
    names = dict(get_user_model().objects.filter(pk__in=owner_ids).values_list("pk", "username"))
    weights = share_weights(owner_ids)
    for standing in standings:
        standing.username = names.get(standing.owner_id, str(standing.owner_id))
        standing.weight = weights[standing.owner_id]


def _pool(pool: str, users: list[UserStanding]) -> PoolStanding:
    kind, _, name = pool.partition(":")
    total = sum(user.service for user in users)
    for user in users:
        user.share = user.service / total if total > 0 else 0.0
    users.sort(key=lambda user: (-user.share, -user.waiting, -user.in_flight, user.username))
    return PoolStanding(pool=pool, kind=kind, name=name, users=users)


def _describe(pools: list[PoolStanding], now: datetime) -> None:
    """The live seats and served nodes of the queues, the limit and queue of the nodes."""
    live = now - timedelta(seconds=seats.LIVE_SECONDS)
    seated = dict(WorkerSeats.objects.filter(seen_at__gte=live).values("queue").annotate(n=Sum("seats"))
                  .order_by().values_list("queue", "n"))
    nodes = list(AINode.objects.order_by("name").values_list("name", "queue", "max_concurrent_calls"))
    for pool in pools:
        if pool.kind == QUEUE:
            pool.seats = seated.get(pool.name, 0)
            pool.nodes = [name for name, queue, _ in nodes if queue == pool.name]
        else:
            pool.limit, pool.queue = next(((limit, queue) for name, queue, limit in nodes if name == pool.name),
                                          (None, ""))
