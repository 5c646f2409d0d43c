"""Thresholds: `quota.threshold` as a user's spending this month passes QUOTA_THRESHOLDS percent of their quota's
monthly tokens or cost, and `budget.threshold` as it passes the thresholds of one of their own alert budgets (of all their jobs, or of those one
API key submitted).

Each (owner, subject, threshold, month) fires once: its `ThresholdCrossing` row and its events are written in one
transaction, and the row's unique constraint refuses the second of two job ends that cross it at once (the loser's
transaction, events included, rolls back). Checked as each job's money is settled (jobs.endings), with figures its
caller hands over: this app reads no ledger.
"""
import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from . import services
from .models import Budget, BudgetMetric, ThresholdCrossing

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Watched:
    """One limit whose thresholds are watched."""

    subject: str         # quota:tokens, quota:cost or budget:<id>
    event_type: str
    metric: str          # tokens or cost
    limit: Decimal
    thresholds: tuple[int, ...]
    name: str = ""
    api_key_id: int | None = None
    api_key: str = ""  # the key's prefix, for people


def watched(*, owner_id: int, quota_tokens: int | None, quota_cost: Decimal | None) -> list[Watched]:
    """The limits of `owner_id` that have thresholds: their quota's (given), their budgets (read here)."""
    quota = tuple(settings.QUOTA_THRESHOLDS)
    found = [Watched(f"quota:{metric}", "quota.threshold", metric, Decimal(limit), quota)
             for metric, limit in ((BudgetMetric.TOKENS, quota_tokens), (BudgetMetric.COST, quota_cost))
             if limit]
    found += [Watched(f"budget:{b.pk}", "budget.threshold", b.metric, b.amount, tuple(b.thresholds), b.name,
                      b.api_key_id, b.api_key.prefix if b.api_key_id else "")
              for b in Budget.objects.filter(owner_id=owner_id).select_related("api_key") if b.amount > 0]
    return found


def check(*, owner_id: int, quota_tokens: int | None, quota_cost: Decimal | None,
          spending: Callable[[], tuple[int, Decimal]],
          key_spending: Callable[[int], tuple[int, Decimal]]) -> list[ThresholdCrossing]:
    """Fire each threshold that `owner_id`'s spending this month (`spending()`: tokens, cost; for a key's budget
    `key_spending(key id)`) has passed and that has not fired this month; returns the crossings this call
    recorded."""
    limits = watched(owner_id=owner_id, quota_tokens=quota_tokens, quota_cost=quota_cost)
    if not limits:
        return []
    period = timezone.localdate().strftime("%Y-%m")
    spent = {None: spending(), **{key: key_spending(key) for key in {w.api_key_id for w in limits} - {None}}}
    fired = set(ThresholdCrossing.objects.filter(owner_id=owner_id, period=period).values_list("subject",
                                                                                               "threshold"))
    made = []
    for limit in limits:
        tokens, cost = spent[limit.api_key_id]
        used = Decimal(tokens) if limit.metric == BudgetMetric.TOKENS else cost
        for threshold in sorted(limit.thresholds):
            if (limit.subject, threshold) in fired or used * 100 < limit.limit * threshold:
                continue
            crossing = _fire(owner_id, limit, threshold, period, used)
            if crossing is not None:
                made.append(crossing)
    return made


def _fire(owner_id: int, limit: Watched, threshold: int, period: str, used: Decimal) -> ThresholdCrossing | None:
    try:
        with transaction.atomic():
            crossing = ThresholdCrossing.objects.create(owner_id=owner_id, subject=limit.subject, threshold=threshold,
                                                        period=period, used=used, limit=limit.limit)
            services.record(owner_id=owner_id, event_type=limit.event_type, data=lambda: _data(limit, crossing))
    except IntegrityError:  # another job's end fired it first
        return None
    logger.info("user %s: %s passed %s%% in %s (%s of %s)", owner_id, limit.subject, threshold, period, used,
                limit.limit)
    return crossing


def _data(limit: Watched, crossing: ThresholdCrossing) -> dict:
    data = {"subject": limit.subject, "metric": limit.metric, "threshold": crossing.threshold,
            "period": crossing.period, "used": format(crossing.used.normalize(), "f"),
            "limit": format(limit.limit.normalize(), "f"), "percent": round(float(crossing.used / limit.limit * 100), 2)}
    if limit.metric == BudgetMetric.COST:
        data["currency"] = settings.BILLING_CURRENCY
    if limit.name:
        data["budget"] = limit.name
    if limit.api_key:
        data["apiKey"] = limit.api_key
    return data
