"""What the usage export (outbound.export) says of a model call and of a job's total: called by the ledger as it
records a call, by a job's end, and by `manage.py export_usage` for a range of days."""
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.utils import timezone

from core.ranges import DateRange, created_in_days
from outbound import export

from .models import TERMINAL, Job, LLMCall


def call_usage(call: LLMCall, *, owner_id: int, function_id: Any) -> export.Usage:
    return export.Usage(owner_id=owner_id, event_id=f"llmcall-{call.pk}", event_type=export.CALL_TYPE,
                        time=call.created_at, data={
                            "jobId": str(call.job_id), "functionId": str(function_id), "model": call.model_id,
                            "node": call.node, "status": call.status, "promptTokens": call.prompt_tokens,
                            "completionTokens": call.completion_tokens, "estimated": call.estimated,
                            "cost": format(call.cost, "f") if call.cost is not None else None,
                            "currency": settings.BILLING_CURRENCY})


def job_usage(job: Job) -> export.Usage:
    return export.Usage(owner_id=job.owner_id, event_id=f"job-{job.pk}", event_type=export.JOB_TYPE,
                        time=job.finished_at or timezone.now(), data={
                            "jobId": str(job.pk), "functionId": str(job.function_id), "model": job.model_id,
                            "status": job.status, "promptTokens": job.prompt_tokens,
                            "completionTokens": job.completion_tokens, "llmCalls": job.llm_calls,
                            "cost": format(job.cost, "f"), "currency": settings.BILLING_CURRENCY,
                            "durationMs": job.duration_ms})


def usage_in(span: DateRange) -> Iterator[export.Usage]:
    """The calls recorded and the jobs ended in `span`, oldest first (each user's in order)."""
    calls = created_in_days(LLMCall.objects.all(), span.start, span.end).select_related("job").order_by("pk")
    for call in calls.iterator(chunk_size=1000):
        yield call_usage(call, owner_id=call.job.owner_id, function_id=call.job.function_id)
    jobs = created_in_days(Job.objects.filter(status__in=TERMINAL), span.start, span.end).order_by("finished_at")
    for job in jobs.iterator(chunk_size=1000):
        yield job_usage(job)
