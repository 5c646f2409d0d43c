"""Quotas with an up-front ceiling: a job is admitted only when its worst case fits in what is left of its owner's
monthly quota, and that worst case is held until the job ends.

A job's worst case is its token budget, and that budget at its model's price (the dearer of the prompt and the
completion price, since either kind of token may fill it). What is left of a month's quota is its limit, less what
was spent this month (the roll-ups), less what running jobs may still spend (their `Hold`s). Each recorded call
moves its cost from its job's hold to what was spent; the job's end deletes the hold, which releases the rest.
Admission runs with the owner's quota row locked (`lock_quota`), so concurrent submits see each other's holds and
together can never promise more than the quota.
"""
import logging
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import Count, F, Sum
from django.db.models.functions import Greatest
from django.utils import timezone

from accounts.models import Quota
from core.errors import DomainError

from .models import COST_QUANTUM, Hold, UsageDaily
from .pricing import price_in_force

logger = logging.getLogger(__name__)

NOT_READ = object()


class QuotaExceeded(DomainError):
    status = 402
    code = "quota_exceeded"


@dataclass(frozen=True)
class Limit:
    """One limit of a quota and where its owner stands against it."""

    limit: Any
    used: Any
    held: Any

    @property
    def remaining(self) -> Any:
        return max(self.limit - self.used - self.held, 0)


@dataclass(frozen=True)
class Standing:
    """A user's use against their quota this month; a limit that is not set is None."""

    month: str
    cost: Limit | None
    tokens: Limit | None
    concurrent_jobs: Limit | None
    requests_per_minute: int | None


def month_start(today: date) -> date:
    return today.replace(day=1)


def lock_quota(owner: User) -> Quota | None:
    """`owner`'s quota, read fresh, with its row locked until the transaction ends (None when they have none).

    One statement: SELECT ... FOR UPDATE on PostgreSQL. SQLite has no row locks and Django leaves the clause out
    there; its transactions take the database's write lock when they begin (`transaction_mode` IMMEDIATE in
    settings), so admissions take turns all the same. The row is not written: its `updated_at` stays the time an
    operator last changed it. An owner read with their quota (as authentication reads them:
    accounts.services.authenticate_key) and found to have none costs no statement.
    """
    if User.quota.related.get_cached_value(owner, default=NOT_READ) is None:
        return None
    return Quota.objects.select_for_update().filter(user=owner).first()


def standing(*, owner: User, quota: Quota | None = None) -> Standing | None:
    """Where `owner` stands against their quota in the current calendar month; None when they have no quota."""
    quota = quota or Quota.objects.filter(user=owner).first()
    if quota is None:
        return None
    start = month_start(timezone.localdate())
    spent = UsageDaily.objects.filter(owner=owner, day__gte=start).aggregate(
        cost=Sum("cost"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
    held = Hold.objects.filter(owner=owner).aggregate(cost=Sum("cost"), tokens=Sum("tokens"), jobs=Count("id"))
    spent_cost = Decimal(spent["cost"] or 0).quantize(COST_QUANTUM)
    held_cost = Decimal(held["cost"] or 0).quantize(COST_QUANTUM)
    return Standing(
        month=start.strftime("%Y-%m"),
        cost=Limit(quota.monthly_cost, spent_cost, held_cost) if quota.monthly_cost is not None else None,
        tokens=(Limit(quota.monthly_tokens, (spent["prompt"] or 0) + (spent["completion"] or 0), held["tokens"] or 0)
                if quota.monthly_tokens is not None else None),
        concurrent_jobs=(Limit(quota.max_concurrent_jobs, held["jobs"] or 0, 0)
                         if quota.max_concurrent_jobs is not None else None),
        requests_per_minute=quota.requests_per_minute,
    )


def standings() -> list[tuple[User, Standing]]:
    """Every user who has a quota, with where they stand against it this month (the operator's dashboard)."""
    return [(quota.user, standing(owner=quota.user, quota=quota))
            for quota in Quota.objects.select_related("user").order_by("user__username")]


def worst_case_cost(*, model_id: str, tokens: int) -> Decimal:
    """What `tokens` tokens of `model_id` can cost at most at today's price; zero for a model with no price (its
    calls are not billed)."""
    price = price_in_force(model_id=model_id, at=timezone.now())
    if price is None:
        return Decimal(0)
    return (tokens * max(price.price_per_1k_prompt, price.price_per_1k_completion) / 1000).quantize(COST_QUANTUM)


def job_budget(*, quota: Quota | None, token_budget: int | None) -> int | None:
    """The budget a job runs with: its own, or a default one when its owner's spending is limited (a job without a
    budget has no worst case to hold)."""
    if token_budget is not None or quota is None or not quota.limits_spending:
        return token_budget
    return quota.default_token_budget or settings.QUOTA_DEFAULT_TOKEN_BUDGET


def admit(*, owner: User, quota: Quota, job_id: Any, model_id: str, token_budget: int | None) -> Hold:
    """Hold the worst case of a new job, or refuse it. Call with the quota locked (`lock_quota`), in the transaction
    that creates the job.

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
    cost = worst_case_cost(model_id=model_id, tokens=tokens)
    if now.cost is not None and cost > now.cost.remaining:
        raise QuotaExceeded(
            f"This job may cost up to {cost} {settings.BILLING_CURRENCY} ({tokens} tokens of {model_id}); "
            f"{now.cost.remaining} {settings.BILLING_CURRENCY} is left of your quota this month.",
            remainingCost=format(now.cost.remaining, "f"), worstCaseCost=format(cost, "f"),
            currency=settings.BILLING_CURRENCY, month=now.month)
    return Hold.objects.create(owner=owner, job_id=job_id, model_id=model_id, cost=cost, tokens=tokens)


def spend_from_hold(*, job_id: Any, cost: Decimal | None, tokens: int | None) -> None:
    """A call of the job was recorded: what it cost is spent now, no longer held (never below zero)."""
    changes: dict[str, Any] = {}
    if cost:
        changes["cost"] = Greatest(F("cost") - cost, Decimal(0))
    if tokens:
        changes["tokens"] = Greatest(F("tokens") - tokens, 0)
    if changes:
        Hold.objects.filter(job_id=job_id).update(**changes)


def release_hold(*, job_id: Any) -> None:
    """The job ended: what it did not spend is no longer held."""
    if Hold.objects.filter(job_id=job_id).delete()[0]:
        logger.info("job %s: ended; its quota hold is released", job_id)
