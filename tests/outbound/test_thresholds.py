"""Quota and budget thresholds: each fires once per month, also when many jobs pass it at the same moment. Spending
is written by the real ledger (jobs.metering.ledger.record_call) on real Job rows; the check is the one the runner
makes at each job's end (jobs.endings.check_thresholds). record_call closes a connection left in a transaction (as
the gateway's threads must), so every test here commits its rows."""
import threading
import uuid
from datetime import date
from decimal import Decimal
from unittest import mock

import pytest

from rest_framework.test import APIClient

from accounts.models import Quota
from accounts.services import create_api_key
from jobs.endings import check_thresholds
from jobs.metering.ledger import record_call
from jobs.models import Job
from nodeclient import Usage
from outbound import services
from outbound.models import Budget, Event, JobKey, ThresholdCrossing
from tests.support.jobs import deploy, make_job, submit
from tests.support.threads import run_in_threads

CODE = "def handler(event, context):\n    return 1\n"


def _spend(job, tokens: int) -> None:
    record_call(job_id=str(job.pk), model_id="smollm2:135m", node="test-node", endpoint="/v1/chat/completions",
                streamed=False, usage=Usage(prompt_tokens=tokens, completion_tokens=0), max_tokens=None,
                done_reason="stop", duration_ms=1, node_duration_ms=None)


def _subscribe(account, *types):
    services.create_endpoint(owner=account.user, url="https://hooks.example.org/x", event_types=list(types))


def _fired(event_type):
    return sorted(e.payload["data"]["threshold"] for e in Event.objects.filter(event_type=event_type))


@pytest.mark.django_db(transaction=True)
def test_quota_thresholds_fire_once_each_as_spending_passes_them(alice, served_models):
    Quota.objects.create(user=alice.user, monthly_tokens=1000)
    _subscribe(alice, "quota.threshold")
    job = make_job(alice, CODE)
    _spend(job, 400)
    check_thresholds(job)
    assert _fired("quota.threshold") == []
    _spend(job, 450)  # 85 %: passes 50 and 80
    check_thresholds(job)
    check_thresholds(job)
    assert _fired("quota.threshold") == [50, 80]
    event = Event.objects.filter(event_type="quota.threshold").order_by("pk").last()
    assert event.payload["data"] | {"period": "-"} == {
        "subject": "quota:tokens", "metric": "tokens", "threshold": 80, "period": "-", "used": "850",
        "limit": "1000", "percent": 85.0}


@pytest.mark.django_db(transaction=True)
def test_a_new_month_fires_the_thresholds_again(alice, served_models):
    Quota.objects.create(user=alice.user, monthly_tokens=100)
    job = make_job(alice, CODE)
    _spend(job, 60)
    check_thresholds(job)
    with mock.patch("django.utils.timezone.localdate", return_value=date(2099, 1, 15)):
        # Nothing spent in that month yet: nothing fires; the month's spending is read from the roll-ups.
        check_thresholds(job)
    assert list(ThresholdCrossing.objects.values_list("threshold", flat=True)) == [50]


@pytest.mark.django_db(transaction=True)
def test_an_alert_budget_fires_its_own_thresholds(alice, bob, served_models):
    Budget.objects.create(owner=alice.user, name="team", metric="tokens", amount=Decimal(200), thresholds=[25, 90])
    _subscribe(alice, "budget.threshold")
    _subscribe(bob, "budget.threshold")
    job = make_job(alice, CODE)
    _spend(job, 60)
    check_thresholds(job)
    assert _fired("budget.threshold") == [25]
    assert Event.objects.get().owner == alice.user
    assert Event.objects.get().payload["data"]["budget"] == "team"


@pytest.mark.django_db(transaction=True)
def test_fifty_jobs_crossing_eighty_percent_at_once_fire_it_once(alice, served_models):
    Quota.objects.create(user=alice.user, monthly_tokens=10_000)
    _subscribe(alice, "quota.threshold")
    first = make_job(alice, CODE)
    _spend(first, 7_900)  # 79 %
    check_thresholds(first)
    jobs = [make_job(alice, CODE) for _ in range(50)]
    start = threading.Barrier(len(jobs))

    def end(job) -> None:
        _spend(job, 100)  # each job alone takes spending past 80 %; together past 100 %
        start.wait(timeout=60)  # every job ends at the same moment
        check_thresholds(job)

    assert run_in_threads(end, [(job,) for job in jobs]) == []
    assert _fired("quota.threshold") == [50, 80, 95, 100]
    assert ThresholdCrossing.objects.filter(threshold=80).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_keys_budget_counts_only_the_jobs_that_key_submitted(alice, served_models):
    other_client = make_account_client(alice)
    _subscribe(alice, "budget.threshold")
    made = alice.client.post("/api/v1/budgets/", {"name": "ci key", "metric": "tokens", "amount": "100",
                                                 "thresholds": [50], "thisKeyOnly": True}, format="json")
    assert made.status_code == 201, made.content
    assert made.json()["apiKey"] == alice.key[:len(made.json()["apiKey"])]
    function = deploy(alice, CODE)
    by_key = submit(alice, function["functionId"], {}).json()["jobId"]
    by_other = submit(other_client, function["functionId"], {}).json()["jobId"]
    assert JobKey.objects.get().job_id == uuid.UUID(by_key)
    _spend(Job.objects.get(pk=by_other), 90)  # another key's job: not this budget's
    check_thresholds(Job.objects.get(pk=by_other))
    assert _fired("budget.threshold") == []
    _spend(Job.objects.get(pk=by_key), 60)
    check_thresholds(Job.objects.get(pk=by_key))
    assert _fired("budget.threshold") == [50]
    assert Event.objects.get().payload["data"]["apiKey"] == made.json()["apiKey"]


def make_account_client(account):
    """A second API key of `account`'s, and a client that sends it."""
    _, key = create_api_key(user=account.user, name="second")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return type(account)(user=account.user, key=key, client=client)
