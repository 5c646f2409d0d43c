"""Token metering for one job: the budget guard and the ledger.

The gateway asks `Meter.reserve` before it forwards a call and `Meter.settle` after. A reservation holds an upper
bound of what the call can cost (its prompt's bound plus the output length granted), so concurrent calls from one
job can never together overshoot its budget. Prompt tokens are not known before the node answers; a token is at
least one byte of text for the tokenizers in use (byte-level BPE), so the prompt's byte length plus a template
allowance bounds them from above.
"""
import logging
import threading
from dataclasses import dataclass

from django.db import close_old_connections, transaction
from django.db.models import Count, F, Sum
from django.utils import timezone

from billing.services import add_call_to_rollups, cost_of_call, job_cost_increments
from models_catalog.nodes import Usage

from .models import METERED, Job, LLMCall, LLMCallStatus

logger = logging.getLogger(__name__)

# Chat templates add role markers and sometimes a default system prompt around each message.
TEMPLATE_TOKENS_PER_CALL = 64
TEMPLATE_TOKENS_PER_MESSAGE = 8


class BudgetExhausted(Exception):
    def __init__(self, remaining: int):
        super().__init__(f"The job's token budget is spent ({remaining} tokens left, too few for this call).")
        self.remaining = remaining


@dataclass(frozen=True)
class Reservation:
    held: int
    max_tokens: int


def prompt_bound(texts: list[str]) -> int:
    """An upper bound of the prompt tokens for a call whose prompt is made of `texts`."""
    return (TEMPLATE_TOKENS_PER_CALL + TEMPLATE_TOKENS_PER_MESSAGE * len(texts)
            + sum(len(text.encode("utf-8")) for text in texts))


class Meter:
    """The running totals and budget of one job, shared by the gateway's request threads."""

    def __init__(self, *, budget: int | None, max_output_tokens: int):
        self.budget = budget
        self.max_output_tokens = max_output_tokens
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.calls = 0
        self.unmetered_calls = 0
        self._spent = 0
        self._held = 0
        self._lock = threading.Lock()

    def reserve(self, *, prompt_tokens_bound: int, requested: int | None) -> Reservation:
        """Grant the call an output length; raises BudgetExhausted when not one token can be granted."""
        wanted = min(requested or self.max_output_tokens, self.max_output_tokens)
        with self._lock:
            if self.budget is None:
                return Reservation(held=0, max_tokens=max(wanted, 1))
            room = self.budget - self._spent - self._held - prompt_tokens_bound
            if room < 1:
                raise BudgetExhausted(max(0, self.budget - self._spent - self._held))
            granted = max(1, min(wanted, room))
            held = prompt_tokens_bound + granted
            self._held += held
            return Reservation(held=held, max_tokens=granted)

    def settle(self, reservation: Reservation, usage: Usage | None) -> None:
        """Release a reservation and count what the node reported. A call with unknown counts keeps its whole
        reservation as spent, so the budget stays a promise even then."""
        with self._lock:
            self._held -= reservation.held
            self.calls += 1
            if usage is None or not usage.known:
                self.unmetered_calls += 1
                self._spent += reservation.held
                return
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens
            self._spent += usage.prompt_tokens + usage.completion_tokens

    def snapshot(self) -> dict[str, int | None]:
        with self._lock:
            remaining = None if self.budget is None else max(0, self.budget - self._spent - self._held)
            return {
                "promptTokens": self.prompt_tokens,
                "completionTokens": self.completion_tokens,
                "totalTokens": self.prompt_tokens + self.completion_tokens,
                "llmCalls": self.calls,
                "unmeteredCalls": self.unmetered_calls,
                "tokenBudget": self.budget,
                "remainingTokens": remaining,
            }


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
