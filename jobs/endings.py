"""A job's end, and what it tells the outside: the one way a job reaches a final status. The move and the events of
the end (`job.<status>` to its owner's webhooks and its run's callback URL, outbound) commit together, so an ended
job's events are never lost and never sent for a move that did not happen."""
import uuid
from typing import Any

from django.db import transaction
from django.db.models import QuerySet

from outbound import services as outbound

from .models import TERMINAL, Job
from .results import execution_result


def end_job(job_id: uuid.UUID | str, status: str, *, among: QuerySet[Job] | None = None, **fields: Any) -> bool:
    """Move job `job_id` to final `status` with `fields` (one conditional UPDATE, `JobQuerySet.move`, on `among`
    when given) and record its end's events in the same transaction; True when this call made the move."""
    if status not in TERMINAL:
        raise ValueError(f"{status!r} is not a final status")
    with transaction.atomic():
        if not (among if among is not None else Job.objects).move(job_id, status, **fields):
            return False
        job = Job.objects.select_related("function_version").get(pk=job_id)
        outbound.record_job_end(owner_id=job.owner_id, job_id=job.pk, status=status,
                                result=lambda: execution_result(job))
    return True
