"""Pricing a model call: the price in force when the call is recorded fixes its cost for good.

Costs are fixed once: `cost_of_call` prices a call when the gateway records it, with the price then in force, and
the cost is written on the ledger row. Everything downstream (a job's cost, the roll-ups, the dashboard, the API,
the CSV) adds up those fixed costs; nothing re-prices an old call.
"""
from datetime import datetime
from decimal import Decimal
from typing import Any

from core.lookups import CachedLookup

from .models import ModelPrice


# Each model's prices, latest first (empty: no price): every model call is priced, so its schedule is a cached look-up
# (core.lookups), invalidated when a price is saved or deleted (billing.apps). A price that takes effect later is
# already in the schedule: its moment needs no invalidation. Each caller gets its own copy of the rows.
_schedules: CachedLookup[list[ModelPrice]] = CachedLookup("prices", copies=True)


def price_in_force(*, model_id: str, at: datetime) -> ModelPrice | None:
    """The price of `model_id` at the moment `at`: the row with the latest `effective_from` not after it."""
    schedule = _schedules.get(
        model_id, lambda: list(ModelPrice.objects.filter(model_id=model_id).order_by("-effective_from")))
    return next((price for price in schedule if price.effective_from <= at), None)


def prices_changed(**_: Any) -> None:
    """Every process reads its price schedules again. A signal receiver (billing.apps)."""
    _schedules.invalidate()


def cost_of_call(*, model_id: str, prompt_tokens: int | None, completion_tokens: int | None,
                 at: datetime) -> Decimal | None:
    """What a call costs at the price in force at `at`; None (unknown, never zero) when either token count is
    unknown or the model has no price then."""
    return priced_call(model_id=model_id, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, at=at)[1]


def priced_call(*, model_id: str, prompt_tokens: int | None, completion_tokens: int | None,
                at: datetime) -> tuple[ModelPrice | None, Decimal | None]:
    """The price in force at `at` (None: the model has none) and what the call costs at it (see `cost_of_call`)."""
    price = price_in_force(model_id=model_id, at=at)
    if price is None or prompt_tokens is None or completion_tokens is None:
        return price, None
    return price, price.cost_of(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def job_cost_increments(cost: Decimal | None) -> dict[str, Any]:
    """What a call of cost `cost` adds to its Job row (field: amount): to `cost` when known, else to
    `uncosted_calls`."""
    return {"cost": cost} if cost is not None else {"uncosted_calls": 1}
