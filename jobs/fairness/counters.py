"""The Virtual Token Counters: each user's recent service from each pool (a queue's workers, a node's call slots),
in service units, decaying with half-life FAIR_SHARE_HALF_LIFE_SECONDS."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from ..models import Job, ServiceCounter

PROMPT_TOKEN_UNITS = 1.0
COMPLETION_TOKEN_UNITS = 2.0
# A second of a worker held by a job, in units: about what this project's CPU node generates in a second, so that a
# job that calls no model still pays for its seat, and one that waits on long calls pays for both.
RUNNING_SECOND_UNITS = 20.0
# What a job or a call is expected to cost before anything is known of its user's: counted for each one in flight.
DEFAULT_JOB_UNITS = 100.0


def queue_pool(queue: str) -> str:
    return f"queue:{queue}"


def node_pool(node: str) -> str:
    return f"node:{node}"


def token_units(prompt_tokens: int, completion_tokens: int) -> float:
    return prompt_tokens * PROMPT_TOKEN_UNITS + completion_tokens * COMPLETION_TOKEN_UNITS


def job_units(job: Job) -> float:
    """What a job that ended cost its queue's workers: its tokens and the time it held a worker."""
    seconds = (job.finished_at - job.started_at).total_seconds() if job.started_at and job.finished_at else 0.0
    return token_units(job.prompt_tokens, job.completion_tokens) + max(seconds, 0.0) * RUNNING_SECOND_UNITS


def decay(since: datetime, now: datetime) -> float:
    """The factor by which service counted at `since` has shrunk by `now`."""
    elapsed = max((now - since).total_seconds(), 0.0)
    return 0.5 ** (elapsed / settings.FAIR_SHARE_HALF_LIFE_SECONDS)


@dataclass(frozen=True)
class Standing:
    """A user's recent service from a pool, as of now, and what they are expected to cost per job (or call)."""

    service: float
    served: float
    served_at: datetime | None

    @property
    def per_job(self) -> float:
        return self.service / self.served if self.served >= 0.5 else DEFAULT_JOB_UNITS


NOBODY = Standing(0.0, 0.0, None)


def standings(pool: str, owner_ids: Iterable[int], *, now: datetime | None = None) -> dict[int, Standing]:
    """Each of `owner_ids`' standing in `pool` now (NOBODY for one the pool never served)."""
    now = now or timezone.now()
    rows = ServiceCounter.objects.filter(pool=pool, owner_id__in=list(owner_ids))
    return {row.owner_id: Standing(row.service * decay(row.updated_at, now), row.jobs * decay(row.updated_at, now),
                                   row.served_at) for row in rows}


def last_turns(pool: str) -> dict[int, datetime]:
    """When `pool` last gave each user a turn."""
    return dict(ServiceCounter.objects.filter(pool=pool, served_at__isnull=False).values_list("owner_id", "served_at"))


def charge(pool: str, owner_id: int, units: float, *, served: float = 0.0, served_at: datetime | None = None) -> None:
    """Add `units` of service (and `served` jobs or calls) to `owner_id`'s counter in `pool`; `served_at`, when
    given, is when the pool last gave them a seat. The row is read and written under its lock: decaying is not an
    addition that an F() expression could do."""
    now = timezone.now()
    for _ in range(2):  # a first charge may race another's creation of the row
        try:
            with transaction.atomic():
                row, _ = ServiceCounter.objects.select_for_update().get_or_create(
                    pool=pool, owner_id=owner_id, defaults={"updated_at": now})
                factor = decay(row.updated_at, now)
                row.service = row.service * factor + units
                row.jobs = row.jobs * factor + served
                row.updated_at = max(row.updated_at, now)
                if served_at is not None:
                    row.served_at = served_at
                row.save(update_fields=["service", "jobs", "updated_at", "served_at"])
            return
        except IntegrityError:
            continue

