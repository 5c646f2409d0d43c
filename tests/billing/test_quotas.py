"""Quotas with an up-front cost ceiling: a run whose worst case (its token budget at the price of the dearest model
it may call) exceeds what is left of its owner's monthly quota is refused at submit with what is left; the worst
case is held while the job runs, its calls move their cost from the hold to what was spent, and once its last call
is billed (billing.job_money.release, from the runner) the rest is released; concurrent
submits never promise more than the quota. Also: jobs at once, tokens per month, default budgets, and the use
against the quota in the usage API and on the operator's dashboard."""
import json
import threading
import time
import urllib.error
import urllib.request
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction

from accounts.models import Quota
from billing import job_money
from billing.models import Hold, ModelPrice
from billing.quotas import lock_quota
from core.formatting import money
from jobs.metering.ledger import record_call
from jobs.models import Job, JobStatus
from nodeclient import Usage
from tests.support.jobs import deploy

HANDLER = "def handler(event, context):\n    return event\n"
MODEL = "model-a"  # 1.00 per 1,000 prompt tokens and 2.00 per 1,000 completion tokens: a token costs 0.002 at most


@pytest.fixture
def priced(db, served_models) -> None:
    ModelPrice.objects.create(model_id=MODEL, price_per_1k_prompt=Decimal("1"), price_per_1k_completion=Decimal("2"))


@pytest.fixture
def function(alice, priced):
    return deploy(alice, HANDLER, name="echo")


def give_quota(account, **limits) -> Quota:
    return Quota.objects.create(user=account.user, **limits)


def run(account, function, *, budget: int | None = None, model: str = MODEL):
    body = {"functionId": function["functionId"], "modelId": model}
    if budget is not None:
        body["tokenBudget"] = budget
    return account.client.post("/run", body, format="json", HTTP_X_ASYNC="true")


def quota_of(account) -> dict:
    return account.client.get("/api/v1/usage/").json()["quota"]


def spend(job_id, *, prompt: int, completion: int) -> None:
    """One model call of the job, recorded as its gateway records it."""
    record_call(job_id=job_id, model_id=MODEL, node="test-node", endpoint="/v1/chat/completions", streamed=False,
                usage=Usage(prompt_tokens=prompt, completion_tokens=completion), max_tokens=256, done_reason="stop",
                duration_ms=5, node_duration_ms=4.0)


# --- the cost ceiling -------------------------------------------------------------------------------------------

def test_a_run_whose_worst_case_exceeds_what_is_left_is_refused_with_402(alice, function):
    give_quota(alice, monthly_cost=Decimal("1.00"))
    response = run(alice, function, budget=600)  # up to 600 x 0.002 = 1.20
    assert response.status_code == 402, response.content
    body = response.json()
    assert body["code"] == "quota_exceeded"
    assert (Decimal(body["remainingCost"]), Decimal(body["worstCaseCost"])) == (Decimal("1"), Decimal("1.2"))
    assert body["currency"] == "USD"
    assert Job.objects.count() == 0
    assert Hold.objects.count() == 0


def test_the_worst_case_is_held_while_the_job_is_queued_or_runs(alice, function):
    give_quota(alice, monthly_cost=Decimal("1.00"))
    accepted = run(alice, function, budget=300)  # up to 0.60
    assert accepted.status_code == 202, accepted.content
    assert Hold.objects.get().cost == Decimal("0.6")
    cost = quota_of(alice)["cost"]
    assert [Decimal(cost[name]) for name in ("limit", "used", "held", "remaining")] == [
        Decimal("1"), Decimal("0"), Decimal("0.6"), Decimal("0.4")]

    refused = run(alice, function, budget=300)
    assert refused.status_code == 402
    assert Decimal(refused.json()["remainingCost"]) == Decimal("0.4")
    assert run(alice, function, budget=200).status_code == 202  # 0.40 still fits


@pytest.mark.django_db(transaction=True)
def test_calls_move_cost_from_the_hold_and_the_end_releases_the_rest(alice, function):
    give_quota(alice, monthly_cost=Decimal("1.00"))
    job_id = run(alice, function, budget=300).json()["jobId"]
    assert Job.objects.move(job_id, JobStatus.RUNNING)
    spend(job_id, prompt=100, completion=50)  # 0.10 + 0.10

    cost = quota_of(alice)["cost"]
    assert (Decimal(cost["used"]), Decimal(cost["held"]), Decimal(cost["remaining"])) == (
        Decimal("0.2"), Decimal("0.4"), Decimal("0.4"))
    assert Hold.objects.get().tokens == 150

    assert Job.objects.move(job_id, JobStatus.SUCCEEDED)
    job_money.release(job_id=job_id)  # the runner, once the gateway is stopped and the ledger complete
    cost = quota_of(alice)["cost"]
    assert (Decimal(cost["used"]), Decimal(cost["held"]), Decimal(cost["remaining"])) == (
        Decimal("0.2"), Decimal("0"), Decimal("0.8"))
    assert Hold.objects.count() == 0
    assert run(alice, function, budget=400).status_code == 202  # 0.80 fits again


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_running_job_keeps_its_hold_until_its_last_calls_are_billed(alice, function):
    give_quota(alice, monthly_tokens=1_000)
    job_id = run(alice, function, budget=1_000).json()["jobId"]
    assert Job.objects.move(job_id, JobStatus.RUNNING)
    spend(job_id, prompt=500, completion=284)
    assert alice.client.post(f"/api/v1/jobs/{job_id}/cancel/").status_code == 200

    # The cancelled job's calls in flight still reach the ledger: until they do, its hold keeps the rest.
    assert run(alice, function, budget=216).status_code == 402
    spend(job_id, prompt=100, completion=116)  # a call in flight at the cancel, billed a moment later
    job_money.release(job_id=job_id)
    assert quota_of(alice)["tokens"]["used"] == 1_000
    assert run(alice, function, budget=1).status_code == 402  # never past the limit, whatever the order


def test_the_hold_covers_the_dearest_model_the_job_may_call(alice, priced):
    give_quota(alice, monthly_cost=Decimal("0.50"))
    cheap = deploy(alice, HANDLER, name="cheap-but-allowed-a-dear-one")
    alice.client.patch(f"/api/v1/functions/{cheap['functionId']}/", {"allowedModels": [MODEL]}, format="json")
    response = run(alice, cheap, budget=1_000, model="model-b")  # model-b has no price; model-a costs 2.00 here
    assert response.status_code == 402, response.content
    assert Decimal(response.json()["worstCaseCost"]) == Decimal("2")
    assert "model-a" in response.json()["detail"]
    assert run(alice, cheap, budget=250, model="model-b").status_code == 202  # 0.50 at model-a's price fits
    assert Hold.objects.get().cost == Decimal("0.5")


def test_cancelling_a_queued_job_releases_its_hold(alice, function):
    give_quota(alice, monthly_cost=Decimal("1.00"))
    job_id = run(alice, function, budget=500).json()["jobId"]
    assert run(alice, function, budget=100).status_code == 402
    assert alice.client.post(f"/api/v1/jobs/{job_id}/cancel/").status_code == 200
    assert Hold.objects.count() == 0
    assert run(alice, function, budget=500).status_code == 202


@pytest.mark.django_db(transaction=True)
def test_concurrent_runs_never_promise_more_than_the_quota(live_server, alice, function):
    give_quota(alice, monthly_cost=Decimal("1.00"))
    body = json.dumps({"functionId": function["functionId"], "modelId": MODEL, "tokenBudget": 150}).encode()
    start = threading.Barrier(10)
    statuses: list[int] = []

    def send() -> None:
        request = urllib.request.Request(f"{live_server.url}/run", data=body, method="POST", headers={
            "Authorization": f"Bearer {alice.key}", "Content-Type": "application/json", "x-async": "true"})
        start.wait()
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                statuses.append(response.status)
        except urllib.error.HTTPError as error:
            statuses.append(error.code)

    threads = [threading.Thread(target=send) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)

    # Each may cost 0.30: three fit in 1.00, the fourth would not.
    assert sorted(statuses) == [202] * 3 + [402] * 7
    assert Job.objects.count() == 3
    assert sum(hold.cost for hold in Hold.objects.all()) == Decimal("0.9")


@pytest.mark.django_db(transaction=True)
def test_an_admission_waits_for_the_one_that_holds_the_quota(alice):
    """What makes concurrent runs take turns (the test above may pass by luck of timing): while one transaction holds
    the quota (lock_quota), another's lock_quota waits until it commits: a row lock on PostgreSQL, the write lock
    taken at BEGIN on SQLite. The quota's `updated_at` is left as the operator set it."""
    quota = give_quota(alice, monthly_cost=Decimal("1.00"))
    locked, release, order = threading.Event(), threading.Event(), []

    def admission(first: bool) -> None:
        try:
            if not first:
                locked.wait(10)
            with transaction.atomic():
                lock_quota(User.objects.get(pk=alice.user.pk))
                if first:
                    locked.set()
                    release.wait(10)
                    order.append("first commits")
                else:
                    order.append("second holds the quota")
        finally:
            connection.close()

    threads = [threading.Thread(target=admission, args=(first,)) for first in (True, False)]
    for thread in threads:
        thread.start()
    assert locked.wait(10)
    time.sleep(0.5)  # ample time for the second to take the quota, were it not made to wait
    release.set()
    for thread in threads:
        thread.join(30)
    assert order == ["first commits", "second holds the quota"]
    assert Quota.objects.get(pk=quota.pk).updated_at == quota.updated_at


def test_a_model_without_a_price_holds_no_cost(alice, function):
    give_quota(alice, monthly_cost=Decimal("0.01"))
    assert run(alice, function, budget=100_000, model="model-b").status_code == 202
    assert Hold.objects.get().cost == 0


# --- budgets ----------------------------------------------------------------------------------------------------

def test_a_job_without_a_budget_takes_the_quotas_default_budget(alice, function):
    give_quota(alice, monthly_cost=Decimal("5"), default_token_budget=250)
    job = Job.objects.get(pk=run(alice, function).json()["jobId"])
    assert job.token_budget == 250
    assert Hold.objects.get(job_id=job.pk).cost == Decimal("0.5")


def test_a_job_without_a_budget_takes_the_settings_default_when_the_quota_has_none(alice, function, settings):
    settings.QUOTA_DEFAULT_TOKEN_BUDGET = 123
    give_quota(alice, monthly_tokens=10_000)
    assert Job.objects.get(pk=run(alice, function).json()["jobId"]).token_budget == 123


def test_the_functions_budget_comes_before_the_default(alice, priced):
    give_quota(alice, monthly_cost=Decimal("5"), default_token_budget=250)
    function = alice.client.post("/api/v1/functions/", {"name": "small", "code": HANDLER, "tokenBudget": 40},
                                 format="json").json()
    assert Job.objects.get(pk=run(alice, function).json()["jobId"]).token_budget == 40


def test_without_a_spending_limit_a_job_keeps_no_budget(alice, function):
    give_quota(alice, max_concurrent_jobs=5)
    assert Job.objects.get(pk=run(alice, function).json()["jobId"]).token_budget is None


# --- tokens and jobs at once ------------------------------------------------------------------------------------

def test_a_run_that_may_spend_more_tokens_than_are_left_is_refused(alice, function):
    give_quota(alice, monthly_tokens=1000)
    assert run(alice, function, budget=700).status_code == 202
    refused = run(alice, function, budget=700)
    assert refused.status_code == 402
    assert (refused.json()["code"], refused.json()["remainingTokens"]) == ("quota_exceeded", 300)


def test_more_jobs_at_once_than_the_quota_allows_answer_429(alice, function):
    give_quota(alice, max_concurrent_jobs=2)
    first = run(alice, function).json()["jobId"]
    assert run(alice, function).status_code == 202
    refused = run(alice, function)
    assert refused.status_code == 429
    assert refused.json()["code"] == "too_many_jobs"
    assert quota_of(alice)["concurrentJobs"] == {"limit": 2, "used": 2, "held": 0, "remaining": 0}
    alice.client.post(f"/api/v1/jobs/{first}/cancel/")
    assert run(alice, function).status_code == 202


def test_quotas_are_per_user(alice, bob, function):
    give_quota(alice, monthly_cost=Decimal("0.10"))
    bobs = deploy(bob, HANDLER, name="echo")
    assert run(bob, bobs, budget=10_000).status_code == 202
    assert quota_of(bob) is None


# --- where a user stands ----------------------------------------------------------------------------------------

def test_the_usage_api_shows_use_against_the_quota(alice, function):
    give_quota(alice, monthly_cost=Decimal("2"), monthly_tokens=5000, max_concurrent_jobs=3, requests_per_minute=600)
    run(alice, function, budget=500)
    quota = quota_of(alice)
    assert quota["month"] == Job.objects.get().created_at.strftime("%Y-%m")
    assert quota["tokens"] == {"limit": 5000, "used": 0, "held": 500, "remaining": 4500}
    assert Decimal(quota["cost"]["remaining"]) == Decimal("1")
    assert quota["concurrentJobs"]["used"] == 1
    assert quota["requestsPerMinute"] == 600
    assert quota["shareWeight"] == 1.0


def test_the_dashboard_shows_each_users_use_against_their_quota(alice, function, operator):
    give_quota(alice, monthly_cost=Decimal("1.00"), max_concurrent_jobs=4)
    run(alice, function, budget=250)  # holds 0.50
    operator.client.force_login(operator.user)
    page = operator.client.get("/admin/usage/").content.decode()
    row = page[page.index('id="quotas"'):].split(f'data-key="{alice.user.pk}"')[1].split("</tr>")[0]
    assert "alice" in row
    assert f"{money(Decimal(0))} / {money(Decimal('0.5'))} / {money(Decimal('0.5'))}" in row
    assert "1 of 4" in row


# --- on a real worker, with the real model ----------------------------------------------------------------------

ASK = ("import ai_client\n"
       "def handler(event, context):\n"
       "    return {'answer': ai_client.generate('The sea is', max_tokens=16, temperature=0, seed=1)}\n")


@pytest.mark.django_db(transaction=True)
def test_a_job_spends_from_its_hold_and_its_end_releases_the_rest(alice, worker, _isolated_broker, settings):
    from models_catalog.services import sync_catalogue

    sync_catalogue(timeout_ms=10_000)  # the real local node (scripts/ai-node.sh)
    model = settings.DEFAULT_MODEL_ID
    ModelPrice.objects.create(model_id=model, price_per_1k_prompt=Decimal("1"), price_per_1k_completion=Decimal("2"))
    give_quota(alice, monthly_cost=Decimal("1.00"))
    settings.RUN_SYNC_TIMEOUT = 90
    running = worker(_isolated_broker)
    function = deploy(alice, ASK)

    response = alice.client.post("/run", {"functionId": function["functionId"], "tokenBudget": 300}, format="json")
    assert response.status_code == 200, (response.content, running.log()[-3000:])
    job = response.json()
    assert job["status"] == "succeeded", job
    assert 0 < Decimal(job["cost"]) <= Decimal("0.6")  # within the worst case that was held

    assert Hold.objects.count() == 0
    cost = quota_of(alice)["cost"]
    assert Decimal(cost["used"]) == Decimal(job["cost"])
    assert Decimal(cost["held"]) == 0
    assert Decimal(cost["remaining"]) == Decimal("1") - Decimal(job["cost"])


def test_operators_set_quotas_in_the_admin(operator, alice):
    operator.client.force_login(operator.user)
    assert operator.client.get("/admin/accounts/quota/add/").status_code == 200
    response = operator.client.post("/admin/accounts/quota/add/", {
        "user": alice.user.pk, "requests_per_minute": "60", "max_concurrent_jobs": "2", "monthly_tokens": "",
        "monthly_cost": "12.50", "default_token_budget": "", "share_weight": "1"})
    assert response.status_code == 302, response.content[-2000:]
    quota = Quota.objects.get(user=alice.user)
    assert (quota.requests_per_minute, quota.monthly_cost, quota.monthly_tokens) == (60, Decimal("12.5"), None)
    assert "alice" in operator.client.get("/admin/accounts/quota/").content.decode()
