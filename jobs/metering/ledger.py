"""The ledger: one `LLMCall` row per model call, priced when it is recorded, added to its job's totals and to the
daily roll-ups in the same transaction."""
import logging

from django.db import close_old_connections, transaction
from django.db.models import Count, F, Sum
from django.utils import timezone

from billing.services import add_call_to_rollups, cost_of_call, job_cost_increments
from core import metrics
from models_catalog.nodes import Usage

from ..models import METERED, Job, LLMCall, LLMCallStatus

logger = logging.getLogger(__name__)


def record_call(*, job_id: str, model_id: str, node: str, endpoint: str, streamed: bool, usage: Usage | None,
                max_tokens: int | None, done_reason: str | None, duration_ms: int, node_duration_ms: float | None,
                error_code: str = "", error_message: str = "") -> LLMCall:
    """Write one ledger row and add it to the job's running totals (with F(), never read-modify-write).

    Called from the gateway's request threads, which must not keep a database connection open after the job.
    """
    close_old_connections()
    known = usage is not None and usage.known
    now = timezone.now()
    # Priced before the transaction opens: on SQLite a transaction that reads before it writes can fail to get the
    # write lock. The cost is fixed here, at the price in force now, and never recomputed.
    cost = cost_of_call(model_id=model_id, prompt_tokens=usage.prompt_tokens if known else None,
                        completion_tokens=usage.completion_tokens if known else None, at=now)
    with transaction.atomic():  # the ledger row, the job's totals and the day's roll-up commit together
        call = LLMCall.objects.create(
            job_id=job_id, model_id=model_id, node=node, endpoint=endpoint, streamed=streamed,
            status=LLMCallStatus.ERROR if error_code else LLMCallStatus.OK,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            max_tokens_granted=max_tokens, done_reason=done_reason or "", duration_ms=duration_ms,
            node_duration_ms=round(node_duration_ms) if node_duration_ms is not None else None,
            error_code=error_code, error_message=error_message[:2000], cost=cost, created_at=now,
        )
        totals = {"llm_calls": F("llm_calls") + 1, **job_cost_increments(cost)}
        if known:
            totals.update(prompt_tokens=F("prompt_tokens") + usage.prompt_tokens,
                          completion_tokens=F("completion_tokens") + usage.completion_tokens)
        else:
            totals["unmetered_calls"] = F("unmetered_calls") + 1
        Job.objects.filter(pk=job_id).update(**totals)
        add_call_to_rollups(call)
    metrics.model_call(model=model_id, node=node, error_code=error_code,
                       prompt_tokens=usage.prompt_tokens if known else None,
                       completion_tokens=usage.completion_tokens if known else None,
                       duration_ms=duration_ms, node_duration_ms=node_duration_ms)
    logger.info("job %s: %s call to %s on %s: %s prompt + %s completion tokens%s", job_id, endpoint, model_id, node,
                call.prompt_tokens, call.completion_tokens, f" ({error_code})" if error_code else "")
    return call


def ledger_totals(job_id: str) -> dict[str, int]:
    """The job's totals recomputed from its ledger rows: what the Job row must agree with.

    Like `record_call`, it adds up only the calls whose two counts are both known; the others are unmetered.
    """
    totals = LLMCall.objects.filter(job_id=job_id).aggregate(
        prompt=Sum("prompt_tokens", filter=METERED), completion=Sum("completion_tokens", filter=METERED),
        calls=Count("id"), unmetered=Count("id", filter=~METERED),
    )
    return {
        "prompt_tokens": totals["prompt"] or 0,
        "completion_tokens": totals["completion"] or 0,
        "llm_calls": totals["calls"],
        "unmetered_calls": totals["unmetered"],
    }
