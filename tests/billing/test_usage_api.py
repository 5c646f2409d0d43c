"""GET /api/v1/usage/: a user's own usage by day, model or function over a range of days."""
from datetime import timedelta
from decimal import Decimal

import pytest

USAGE = "/api/v1/usage/"
MARCH = {"from": "2026-03-01", "to": "2026-03-31"}


@pytest.fixture
def alices_march(alice, bob, usual_prices, make_function, new_job, record, day0):
    """Alice: two functions, two models, four days of March; bob: a call on the same day (never in alice's)."""
    ask, summarise = make_function(alice, "ask"), make_function(alice, "summarise")
    record(new_job(ask, at=day0), prompt=1000, completion=500)
    record(new_job(ask, at=day0 + timedelta(days=1)), prompt=2000, completion=0, failed=True)
    job = new_job(summarise, model_id="qwen2.5:14b", at=day0 + timedelta(days=1))
    record(job, prompt=300, completion=300)
    record(job, prompt=None, completion=None)
    new_job(summarise, at=day0 + timedelta(days=3))  # a job that made no call
    record(new_job(ask, at=day0 + timedelta(days=40)), prompt=5, completion=5)  # April: outside the range
    record(new_job(make_function(bob), at=day0), prompt=9999, completion=9999)
    return ask, summarise


def test_it_answers_the_callers_usage_by_day(alice, alices_march):
    body = alice.client.get(USAGE, MARCH).json()

    assert (body["from"], body["to"], body["groupBy"], body["currency"]) == ("2026-03-01", "2026-03-31", "day", "USD")
    assert body["count"] == 3
    assert [(row["day"], row["calls"], row["jobs"]) for row in body["results"]] == [
        ("2026-03-01", 1, 1), ("2026-03-02", 3, 2), ("2026-03-04", 0, 1)]
    first = body["results"][0]
    assert (first["promptTokens"], first["completionTokens"], first["totalTokens"]) == (1000, 500, 1500)
    assert Decimal(first["cost"]) == Decimal("0.09")  # 1000 x 0.05 / 1000 + 500 x 0.08 / 1000
    second = body["results"][1]
    assert (second["failedCalls"], second["unmeteredCalls"], second["uncostedCalls"]) == (1, 1, 1)
    assert body["totals"] == {
        "calls": 4, "failedCalls": 1, "unmeteredCalls": 1, "estimatedCalls": 0, "uncostedCalls": 1, "promptTokens": 3300,
        "completionTokens": 800, "totalTokens": 4100, "jobs": 4,
        "cost": body["totals"]["cost"],
    }
    # 0.09 + 2000 x 0.05 / 1000 + 300 x 0.1 / 1000 + 300 x 0.15 / 1000
    assert Decimal(body["totals"]["cost"]) == Decimal("0.265")


def test_it_answers_the_callers_usage_by_model(alice, alices_march):
    body = alice.client.get(USAGE, {**MARCH, "group_by": "model"}).json()

    assert [(row["modelId"], row["calls"], row["jobs"], row["totalTokens"]) for row in body["results"]] == [
        ("llama3.1:8b", 2, 3, 3500), ("qwen2.5:14b", 2, 1, 600)]
    assert "day" not in body["results"][0]


def test_it_answers_the_callers_usage_by_function(alice, alices_march):
    ask, summarise = alices_march

    body = alice.client.get(USAGE, {**MARCH, "group_by": "function"}).json()

    assert [(row["functionName"], row["functionId"], row["calls"], row["jobs"]) for row in body["results"]] == [
        ("ask", str(ask.pk), 2, 2), ("summarise", str(summarise.pk), 2, 2)]


def test_charlie_cannot_see_alices_usage(alice, charlie, alices_march):
    body = charlie.client.get(USAGE, MARCH).json()

    assert body["count"] == 0
    assert body["results"] == []
    assert body["totals"]["calls"] == 0 and Decimal(body["totals"]["cost"]) == 0


def test_the_default_range_is_the_last_30_days(alice):
    from django.utils import timezone

    body = alice.client.get(USAGE).json()

    today = timezone.localdate()
    assert (body["from"], body["to"]) == ((today - timedelta(days=29)).isoformat(), today.isoformat())


def test_it_is_paginated(alice, alices_march):
    body = alice.client.get(USAGE, {**MARCH, "page_size": 2}).json()

    assert body["count"] == 3 and len(body["results"]) == 2 and body["next"]
    assert body["totals"]["calls"] == 4  # the totals are of the whole range, not of the page
    rest = alice.client.get(body["next"]).json()
    assert [row["day"] for row in rest["results"]] == ["2026-03-04"]


@pytest.mark.parametrize("query", [
    {"from": "2026-02-30"}, {"from": "yesterday"}, {"to": "2026-3-1"}, {"to": "20260301"},
    {"from": "2026-03-01T00:00"},
])
def test_bad_dates_answer_400_invalid_date(alice, query):
    response = alice.client.get(USAGE, query)

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_date"
    assert "YYYY-MM-DD" in response.json()["detail"]


@pytest.mark.parametrize("query", [{"from": "2026-03-02", "to": "2026-03-01"},
                                   {"from": "1990-01-01", "to": "2026-03-01"}])
def test_a_backwards_or_too_long_range_answers_400_invalid_range(alice, query):
    response = alice.client.get(USAGE, query)

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_range"


def test_an_unknown_grouping_answers_400(alice):
    response = alice.client.get(USAGE, {"group_by": "user"})

    assert response.status_code == 400
    assert response.json() == {"detail": "`group_by` must be one of day, model, function.",
                                "code": "invalid_group_by"}


def test_it_needs_an_api_key(anonymous):
    response = anonymous.get(USAGE)

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


def test_it_answers_without_the_trailing_slash_too(alice):
    assert alice.client.get("/api/v1/usage").status_code == 200


def test_a_browser_gets_the_same_figures_as_html(alice, alices_march):
    response = alice.client.get(USAGE, MARCH, HTTP_ACCEPT="text/html")

    assert response.status_code == 200
    assert "&quot;promptTokens&quot;: 3300" in response.content.decode()
