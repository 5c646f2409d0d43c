"""A job's money, in one place: its admission against its owner's quota, what each of its calls spends, and the
release of what it did not spend. Called by the jobs services and the worker's runner, never from a model or a
QuerySet.

- `admit` holds the job's worst case: its token budget at the price of the dearest model it may call (the job's
  own and the function's other allowed models: each call is billed at the model it really called), the dearer of
  the prompt and the completion price, since either kind of token may fill the budget.
- `spend` moves a recorded call's cost and tokens from the hold to what was spent (the roll-ups hold the latter).
- `release` deletes the hold once the job can spend nothing more: its gateway is stopped and its calls are on the
  ledger (or it never started). Not when its status turns final: a running job that is cancelled still has calls
  in flight, which are billed a moment later.
"""
import logging
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from accounts.models import Quota
from core.errors import DomainError

from .models import COST_QUANTUM, Hold
from .pricing import price_in_force
from .quotas import QuotaExceeded, standing

logger = logging.getLogger(__name__)


def worst_case_cost(*, model_ids: list[str], tokens: int) -> tuple[Decimal, str]:
    """What `tokens` tokens can cost at most at today's prices of `model_ids`, and the model that costs it; zero for
    models with no price (their calls are not billed)."""
    now = timezone.now()
    worst, dearest = Decimal(0), model_ids[0]
    for model_id in model_ids:
        price = price_in_force(model_id=model_id, at=now)
        if price is None:
            continue
        cost = (tokens * max(price.price_per_1k_prompt, price.price_per_1k_completion) / 1000).quantize(COST_QUANTUM)
        if cost > worst:
            worst, dearest = cost, model_id
    return worst, dearest


def admit(*, owner: User, quota: Quota, job_id: Any, model_ids: list[str], token_budget: int | None) -> Hold:
    """Hold the worst case of a new job that may call `model_ids` (its own model first), or refuse it. Call with the
    quota locked (`quotas.lock_quota`), in the transaction that creates the job.

    Raises DomainError `too_many_jobs` (429) when the owner has as many jobs queued or running as allowed, and
    QuotaExceeded (402) when the job's worst case is more than what is left of the month's tokens or cost; both
    say what is left.
    """
    now = standing(owner=owner, quota=quota)
    if now.concurrent_jobs is not None and now.concurrent_jobs.remaining < 1:
        raise DomainError(f"You have {now.concurrent_jobs.used} jobs queued or running, the most your quota allows.",
                          code="too_many_jobs", status=429, limit=now.concurrent_jobs.limit)
    tokens = token_budget or 0
    if now.tokens is not None and tokens > now.tokens.remaining:
        raise QuotaExceeded(
            f"This job may spend up to {tokens} tokens; {now.tokens.remaining} are left of your quota this month.",
            remainingTokens=now.tokens.remaining, worstCaseTokens=tokens, month=now.month)
    cost, dearest = worst_case_cost(model_ids=model_ids, tokens=tokens)
    if now.cost is not None and cost > now.cost.remaining:
        raise QuotaExceeded(
            f"This job may cost up to {cost} {settings.BILLING_CURRENCY} ({tokens} tokens of {dearest}, the dearest "
            f"model it may call); {now.cost.remaining} {settings.BILLING_CURRENCY} is left of your quota this month.",
            remainingCost=format(now.cost.remaining, "f"), worstCaseCost=format(cost, "f"),
            currency=settings.BILLING_CURRENCY, month=now.month)
    return Hold.objects.create(owner=owner, job_id=job_id, model_id=dearest, cost=cost, tokens=tokens)


def spend(*, job_id: Any, cost: Decimal | None, tokens: int | None) -> None:
    """A call of the job was recorded: what it cost is spent now, no longer held (never below zero). A correction
    (a call counted again) may be negative: it gives back to the hold what was spent too much."""
    changes: dict[str, Any] = {}
    if cost:
        changes["cost"] = Greatest(F("cost") - cost, Decimal(0))
    if tokens:
        changes["tokens"] = Greatest(F("tokens") - tokens, 0)
    if changes:
        Hold.objects.filter(job_id=job_id).update(**changes)


def release(*, job_id: Any) -> None:
    """The job can spend nothing more: what it did not spend is no longer held."""
    if Hold.objects.filter(job_id=job_id).delete()[0]:
        logger.info("job %s: settled; its quota hold is released", job_id)
