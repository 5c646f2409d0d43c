"""Quotas with an up-front ceiling: where each user stands against their monthly quota. A job is admitted only when its
worst case fits in what is left (billing.job_money, which holds that worst case until the job's calls are billed).

What is left of a month's quota is its limit, less what was spent this month (the roll-ups), less what jobs not yet
settled may still spend (their `Hold`s). Admission runs with the owner's quota row locked (`lock_quota`), so
concurrent submits see each other's holds and together can never promise more than the quota.
"""
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import Count, Sum
from django.utils import timezone

from accounts.models import Quota
from core.errors import DomainError

from .models import COST_QUANTUM, Hold, UsageDaily

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
    share_weight: float


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


def share_weights(owner_ids: Iterable[int]) -> dict[int, float]:
    """Each of `owner_ids`' weight in fair share (their quota's `share_weight`; 1 for a user without a quota)."""
    ids = list(owner_ids)
    weights = dict(Quota.objects.filter(user_id__in=ids).values_list("user_id", "share_weight"))
    return {owner_id: weights.get(owner_id, 1.0) for owner_id in ids}


def month_spending(owner_id: int) -> tuple[int, Decimal]:
    """The tokens and the cost `owner_id` spent in the current calendar month (the roll-ups: billed calls)."""
    spent = UsageDaily.objects.filter(owner_id=owner_id, day__gte=month_start(timezone.localdate())).aggregate(
        cost=Sum("cost"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
    return (spent["prompt"] or 0) + (spent["completion"] or 0), Decimal(spent["cost"] or 0).quantize(COST_QUANTUM)


def monthly_limits(owner_id: int) -> tuple[int | None, Decimal | None]:
    """The monthly tokens and cost `owner_id`'s quota allows (None: no limit, or no quota)."""
    limits = Quota.objects.filter(user_id=owner_id).values_list("monthly_tokens", "monthly_cost").first()
    return limits or (None, None)


def standing(*, owner: User, quota: Quota | None = None) -> Standing | None:
    """Where `owner` stands against their quota in the current calendar month; None when they have no quota."""
    quota = quota or Quota.objects.filter(user=owner).first()
    if quota is None:
        return None
    start = month_start(timezone.localdate())
    spent_tokens, spent_cost = month_spending(owner.pk)
    held = Hold.objects.filter(owner=owner).aggregate(cost=Sum("cost"), tokens=Sum("tokens"), jobs=Count("id"))
    held_cost = Decimal(held["cost"] or 0).quantize(COST_QUANTUM)
    return Standing(
        month=start.strftime("%Y-%m"),
        cost=Limit(quota.monthly_cost, spent_cost, held_cost) if quota.monthly_cost is not None else None,
        tokens=(Limit(quota.monthly_tokens, spent_tokens, held["tokens"] or 0)
                if quota.monthly_tokens is not None else None),
        concurrent_jobs=(Limit(quota.max_concurrent_jobs, held["jobs"] or 0, 0)
                         if quota.max_concurrent_jobs is not None else None),
        requests_per_minute=quota.requests_per_minute, share_weight=quota.share_weight,
    )


def standings() -> list[tuple[User, Standing]]:
    """Every user who has a quota, with where they stand against it this month (the operator's dashboard)."""
    return [(quota.user, standing(owner=quota.user, quota=quota))
            for quota in Quota.objects.select_related("user").order_by("user__username")]


def job_budget(*, quota: Quota | None, token_budget: int | None) -> int | None:
    """The budget a job runs with: its own, or a default one when its owner's spending is limited (a job without a
    budget has no worst case to hold)."""
    if token_budget is not None or quota is None or not quota.limits_spending:
        return token_budget
    return quota.default_token_budget or settings.QUOTA_DEFAULT_TOKEN_BUDGET
