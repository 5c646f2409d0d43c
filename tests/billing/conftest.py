"""Fixtures of the billing tests: prices, functions and jobs, model calls recorded through the gateway's own path
(`jobs.metering.ledger.record_call`) at chosen moments, sums computed from the ledger by hand, and a reader of pages.

Calls are recorded with the real code: record_call prices each call, writes its ledger row, bumps its job's totals
and its day's roll-up. Only the clock it reads is set by the test, so that months of usage fit in one test.
"""
from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import date, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from tests.billing.helpers import (
    CODE,
    DAY0,
    FUNCTION_NAMES,
    MODELS,
    PRICE_CHANGE,
    PRICES,
    Clock,
    PageReader,
    Sums,
    local_day,
)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    from jobs.metering import ledger

    clock = Clock()
    # Only the metering module's clock: sessions, auto_now fields and everything else keep the real time.
    monkeypatch.setattr(ledger, "timezone", SimpleNamespace(now=lambda: clock.now))
    return clock


@pytest.fixture
def set_price(db) -> Callable[..., Any]:
    from billing.models import ModelPrice

    def set_price(model_id: str, prompt: str, completion: str, *, since: datetime = DAY0 - timedelta(days=30)):
        return ModelPrice.objects.create(model_id=model_id, price_per_1k_prompt=Decimal(prompt),
                                         price_per_1k_completion=Decimal(completion), effective_from=since)

    return set_price


@pytest.fixture
def usual_prices(set_price) -> None:
    """PRICES: each model's first price from a month before DAY0, its second from PRICE_CHANGE; one model unpriced."""
    for model_id, (first, second) in PRICES.items():
        set_price(model_id, *first)
        set_price(model_id, *second, since=PRICE_CHANGE)


@pytest.fixture
def make_function(db) -> Callable[..., Any]:
    from jobs import services

    def make_function(account: Any, name: str | None = None):
        return services.deploy_function(owner=account.user, name=name or f"fn-{random.randrange(10**9)}", code=CODE)

    return make_function


@pytest.fixture
def new_job(db) -> Callable[..., Any]:
    """A Job row of `function` created at `at` (made directly: nothing is enqueued, no model is routed)."""
    from jobs.services import create_job

    def new_job(function: Any, *, model_id: str = "llama3.1:8b", at: datetime = DAY0, **fields: Any):
        return create_job(owner=function.owner, function=function, function_version=function.current_version,
                                  model_id=model_id, queue="jobs", memory_mb=function.memory_mb,
                                  timeout_seconds=function.timeout_seconds, created_at=at, **fields)

    return new_job


@pytest.fixture
def record(transactional_db, clock: Clock) -> Callable[..., Any]:
    """Record one model call of `job` at `at` through jobs.metering.ledger.record_call, as the gateway does.

    `prompt=None` stands for a node that did not report its counts; `failed=True` for a call the node failed.
    record_call closes a connection left in a transaction (the gateway's threads must not hold one), so tests that
    record run on `transactional_db`, as the gateway's own tests do."""
    from jobs.metering.ledger import record_call
    from nodeclient import Usage

    def record(job: Any, *, at: datetime | None = None, prompt: int | None = 100, completion: int | None = 50,
               model_id: str | None = None, failed: bool = False):
        clock.now = at or job.created_at
        usage = None if prompt is None else Usage(prompt_tokens=prompt, completion_tokens=completion)
        return record_call(job_id=job.pk, model_id=model_id or job.model_id, node="test-node",
                           endpoint="/v1/chat/completions", streamed=False, usage=usage, max_tokens=256,
                           done_reason="" if failed else "stop", duration_ms=42, node_duration_ms=40.0,
                           error_code="node_error" if failed else "",
                           error_message="the node answered 500" if failed else "")

    return record


@pytest.fixture
def seed_usage(usual_prices, make_function, new_job, record) -> Callable[..., list[Any]]:
    """Months of usage of `accounts`: two functions each, four models (one unpriced), a price change half way,
    about four calls per job, some failed calls and some the node did not count. Returns the jobs."""

    def seed_usage(accounts: Iterable[Any], *, calls: int = 400, days: int = 120, seed: int = 5) -> list[Any]:
        rng = random.Random(seed)
        names = iter(FUNCTION_NAMES)
        functions = [make_function(account, next(names, None)) for account in accounts for _ in range(2)]
        jobs, recorded = [], 0
        while recorded < calls:
            at = DAY0 + timedelta(seconds=rng.uniform(0, days * 86400))
            job = new_job(rng.choice(functions), model_id=rng.choice(MODELS), at=at)
            jobs.append(job)
            for _ in range(min(rng.randint(0, 7), calls - recorded)):
                at += timedelta(seconds=rng.uniform(1, 900))  # some calls land on the next day
                failed = rng.random() < 0.08
                counted = rng.random() > 0.06
                record(job, at=at, failed=failed, prompt=rng.randint(1, 3000) if counted else None,
                       completion=rng.randint(0, 900))
                recorded += 1
        return jobs

    return seed_usage


# --- sums computed from the ledger by hand ----------------------------------------------------------------------

@pytest.fixture
def ledger_sums() -> Callable[..., dict[Any, Sums]]:
    """`ledger_sums(key, start=, end=)`: the ledger's rows and the jobs of days start..end summed by hand, grouped
    by `key(day, owner_id, function_id, model_id)` (a call's model, a job's own model)."""
    from jobs.models import Job, LLMCall

    def ledger_sums(key: Callable[[date, int, Any, str], Any] = lambda *parts: "all", *,
                    start: date | None = None, end: date | None = None) -> dict[Any, Sums]:
        groups: dict[Any, Sums] = defaultdict(Sums)

        def inside(day: date) -> bool:
            return (start is None or day >= start) and (end is None or day <= end)

        for call in LLMCall.objects.select_related("job"):
            day = local_day(call.created_at)
            if inside(day):
                groups[key(day, call.job.owner_id, call.job.function_id, call.model_id)].add_call(call)
        for job in Job.objects.all():
            day = local_day(job.created_at)
            if inside(day):
                groups[key(day, job.owner_id, job.function_id, job.model_id)].jobs += 1
        return dict(groups)

    return ledger_sums


@pytest.fixture
def same_money() -> Callable[[Decimal, Decimal], bool]:
    """Equal costs: exactly on PostgreSQL (numeric); on SQLite, whose decimals are stored as doubles, to 1e-7."""
    from django.db import connection

    def same_money(a: Decimal, b: Decimal) -> bool:
        if connection.vendor == "postgresql":
            return Decimal(a) == Decimal(b)
        return abs(Decimal(a) - Decimal(b)) < Decimal("1e-7")

    return same_money


# --- reading pages ----------------------------------------------------------------------------------------------

@pytest.fixture
def read_page() -> Callable[[str | bytes], PageReader]:
    def read_page(html: str | bytes) -> PageReader:
        reader = PageReader()
        reader.feed(html.decode() if isinstance(html, bytes) else html)
        reader.close()
        return reader

    return read_page


@pytest.fixture
def day0() -> datetime:
    """The first day of the seeded usage (a Sunday, 1 March 2026, UTC)."""
    return DAY0
