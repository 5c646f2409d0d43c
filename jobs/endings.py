"""A job's end, and what it tells the outside: the one way a job reaches a final status. The move and the events of
the end (`job.<status>` to its owner's webhooks and its run's callback URL, and the job's total to the usage export:
outbound) commit together, so an ended job's events are never lost and never sent for a move that did not happen.
Once the job's money is settled, the thresholds its owner's spending passed fire (`check_thresholds`)."""
import logging
import uuid
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import QuerySet, Sum
from django.utils import timezone

from billing.quotas import month_spending, month_start, monthly_limits
from core.ranges import day_start
from outbound import export, services as outbound, thresholds
from outbound.models import JobKey

from .fairness import job_turns
from .models import TERMINAL, Job
from .results import execution_result
from .usage_export import job_usage

logger = logging.getLogger(__name__)


def end_job(job_id: uuid.UUID | str, status: str, *, among: QuerySet[Job] | None = None, **fields: Any) -> bool:
    """Move job `job_id` to final `status` with `fields` (one conditional UPDATE, `JobQuerySet.move`, on `among`
    when given) and record its end's events in the same transaction; True when this call made the move."""
    if status not in TERMINAL:
        raise ValueError(f"{status!r} is not a final status")
    with transaction.atomic():
        if not (among if among is not None else Job.objects).move(job_id, status, **fields):
            return False
        job = Job.objects.select_related("function_version").get(pk=job_id)
        if job_turns.in_force():
            job_turns.job_ended(job)
        outbound.record_job_end(owner_id=job.owner_id, job_id=job.pk, status=status,
                                result=lambda: execution_result(job))
        export.record(lambda: job_usage(job))
    return True


def key_month_spending(api_key_id: int) -> tuple[int, Decimal]:
    """The tokens and cost this month of the jobs API key `api_key_id` submitted (recorded as outbound.JobKey)."""
    submitted = JobKey.objects.filter(api_key_id=api_key_id).values("job_id")
    spent = Job.objects.filter(pk__in=submitted, created_at__gte=day_start(month_start(timezone.localdate()))
                               ).aggregate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"),
                                           cost=Sum("cost"))
    return (spent["prompt"] or 0) + (spent["completion"] or 0), Decimal(spent["cost"] or 0)


def check_thresholds(job: Job) -> None:
    """Fire the thresholds (quota and alert budgets) that `job`'s owner's spending this month has passed: called by
    the runner once the job's calls are on the ledger. A failure here is logged; it fails nothing of the job."""
    try:
        quota_tokens, quota_cost = monthly_limits(job.owner_id)
        thresholds.check(owner_id=job.owner_id, quota_tokens=quota_tokens, quota_cost=quota_cost,
                         spending=lambda: month_spending(job.owner_id), key_spending=key_month_spending)
    except Exception:
        logger.exception("job %s: checking its owner's thresholds failed", job.pk)
