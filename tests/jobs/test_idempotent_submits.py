"""Idempotency-Key on POST /run and on deploys: a retried request gets the first answer (the same job or function;
nothing is made, run or billed twice), another body under the same key is refused, and ten copies of one request
sent at once make one job. No worker runs here: jobs stay queued."""
import json
import threading
import urllib.error
import urllib.request
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db.models import Sum

from billing.models import UsageDaily
from jobs.models import Function, IdempotencyKey, Job
from tests.support.jobs import deploy

HANDLER = "def handler(event, context):\n    return event\n"
ASK = ("import ai_client\n"
       "def handler(event, context):\n"
       "    return {'answer': ai_client.generate('The sea is', max_tokens=8, temperature=0, seed=1)}\n")


@pytest.fixture
def function(alice, served_models):
    return deploy(alice, HANDLER, name="echo")


def run(account, body, key, **headers):
    return account.client.post("/run", body, format="json", HTTP_X_ASYNC="true", HTTP_IDEMPOTENCY_KEY=key,
                               **headers)


def jobs_in_rollups(account) -> int:
    return UsageDaily.objects.filter(owner=account.user).aggregate(n=Sum("jobs"))["n"] or 0


def test_a_repeated_run_with_the_same_key_and_body_answers_the_first_job(alice, function):
    body = {"functionId": function["functionId"], "inputData": {"n": 1}}
    first = run(alice, body, "order-1")
    again = run(alice, body, "order-1")

    assert (first.status_code, again.status_code) == (202, 202), again.content
    assert again.json()["jobId"] == first.json()["jobId"]
    assert again["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert Job.objects.filter(owner=alice.user).count() == 1
    assert jobs_in_rollups(alice) == 1


def test_the_same_key_with_another_body_is_refused_with_422(alice, function):
    assert run(alice, {"functionId": function["functionId"], "inputData": {"n": 1}}, "order-2").status_code == 202
    response = run(alice, {"functionId": function["functionId"], "inputData": {"n": 2}}, "order-2")
    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_reused"
    assert Job.objects.count() == 1


def test_different_keys_make_different_jobs(alice, function):
    body = {"functionId": function["functionId"]}
    ids = {run(alice, body, key).json()["jobId"] for key in ("a", "b", "c")}
    assert len(ids) == 3


def test_keys_are_per_user(alice, bob, function, served_models):
    bobs = deploy(bob, HANDLER, name="echo")
    alices_job = run(alice, {"functionId": function["functionId"]}, "shared-key").json()["jobId"]
    bobs_job = run(bob, {"functionId": bobs["functionId"]}, "shared-key")
    assert bobs_job.status_code == 202, bobs_job.content
    assert bobs_job.json()["jobId"] != alices_job
    assert Job.objects.filter(owner=bob.user).count() == 1


def test_a_key_older_than_its_ttl_makes_a_new_job(alice, function, settings):
    body = {"functionId": function["functionId"]}
    first = run(alice, body, "old-key").json()["jobId"]
    IdempotencyKey.objects.update(created_at=IdempotencyKey.objects.get().created_at
                                  - timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL + 1))
    second = run(alice, body, "old-key")
    assert second.status_code == 202
    assert second.json()["jobId"] != first
    assert "Idempotent-Replayed" not in second


def test_a_refused_run_leaves_no_key_behind(alice, function):
    refused = run(alice, {"functionId": function["functionId"], "modelId": "no-such-model"}, "retry-me")
    assert refused.status_code == 400
    assert refused.json()["code"] == "unknown_model"
    fixed = run(alice, {"functionId": function["functionId"], "modelId": "model-a"}, "retry-me")
    assert fixed.status_code == 202, fixed.content
    assert Job.objects.get().model_id == "model-a"


@pytest.mark.parametrize("key", ["", "x" * 256, "naïve"])
def test_a_malformed_key_answers_400(alice, function, key):
    response = run(alice, {"functionId": function["functionId"]}, key)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_idempotency_key"
    assert Job.objects.count() == 0


def test_a_synchronous_repeat_answers_the_same_job(alice, function, settings):
    settings.RUN_SYNC_TIMEOUT = 0.2
    body = {"functionId": function["functionId"]}
    first = alice.client.post("/run", body, format="json", HTTP_IDEMPOTENCY_KEY="sync-1")
    again = alice.client.post("/run", body, format="json", HTTP_IDEMPOTENCY_KEY="sync-1")
    assert first.json()["jobId"] == again.json()["jobId"]
    assert Job.objects.count() == 1


def test_a_repeated_deploy_answers_the_first_function(alice, served_models):
    body = {"name": "once", "code": HANDLER, "memoryMb": 128}
    first = alice.client.post("/deploy", body, format="json", HTTP_IDEMPOTENCY_KEY="deploy-1")
    again = alice.client.post("/deploy", body, format="json", HTTP_IDEMPOTENCY_KEY="deploy-1")
    assert (first.status_code, again.status_code) == (201, 201), again.content
    assert again.json()["functionId"] == first.json()["functionId"]
    assert again["Idempotent-Replayed"] == "true"
    assert Function.objects.filter(owner=alice.user).count() == 1

    other = alice.client.post("/deploy", {**body, "memoryMb": 256}, format="json", HTTP_IDEMPOTENCY_KEY="deploy-1")
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"


def test_a_repeated_multipart_deploy_answers_the_first_function(alice, served_models):
    def upload_file(code: bytes):
        return alice.client.post("/api/v1/functions/", {"name": "uploaded",
                                                        "file": SimpleUploadedFile("main.py", code)},
                                 format="multipart", HTTP_IDEMPOTENCY_KEY="upload-1")

    first, again = upload_file(HANDLER.encode()), upload_file(HANDLER.encode())
    assert (first.status_code, again.status_code) == (201, 201), again.content
    assert again.json()["functionId"] == first.json()["functionId"]
    changed = upload_file(HANDLER.encode() + b"# changed\n")
    assert changed.status_code == 422


# --- ten at once ------------------------------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_ten_concurrent_duplicates_make_one_job(live_server, alice, function):
    body = json.dumps({"functionId": function["functionId"], "inputData": {"n": 10}}).encode()
    start = threading.Barrier(10)
    answers: list[tuple[int, dict]] = []

    def send() -> None:
        request = urllib.request.Request(
            f"{live_server.url}/run", data=body, method="POST",
            headers={"Authorization": f"Bearer {alice.key}", "Content-Type": "application/json", "x-async": "true",
                     "Idempotency-Key": "burst-1"})
        start.wait()
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answers.append((response.status, json.loads(response.read())))
        except urllib.error.HTTPError as error:
            answers.append((error.code, json.loads(error.read())))

    threads = [threading.Thread(target=send) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)

    assert [status for status, _ in answers] == [202] * 10, answers
    assert len({answer["jobId"] for _, answer in answers}) == 1
    assert Job.objects.filter(owner=alice.user).count() == 1
    assert jobs_in_rollups(alice) == 1


# --- run and billed once, on a real worker with the real model ---------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_a_repeated_synchronous_run_is_run_and_billed_once(alice, worker, _isolated_broker, settings):
    from billing.models import ModelPrice
    from jobs.models import LLMCall
    from models_catalog.services import sync_catalogue

    sync_catalogue(timeout_ms=10_000)  # the real local node (scripts/ai-node.sh)
    ModelPrice.objects.create(model_id=settings.DEFAULT_MODEL_ID, price_per_1k_prompt=Decimal("0.5"),
                              price_per_1k_completion=Decimal("1.5"))
    settings.RUN_SYNC_TIMEOUT = 90
    running = worker(_isolated_broker)
    function = deploy(alice, ASK)
    body = {"functionId": function["functionId"]}

    first = alice.client.post("/run", body, format="json", HTTP_IDEMPOTENCY_KEY="bill-once")
    again = alice.client.post("/run", body, format="json", HTTP_IDEMPOTENCY_KEY="bill-once")

    assert first.status_code == 200, (first.content, running.log()[-3000:])
    assert first.json()["status"] == "succeeded", first.json()
    assert again.status_code == 200
    assert again.json() == first.json()
    assert Job.objects.count() == 1
    assert LLMCall.objects.filter(job__owner=alice.user).count() == first.json()["llmCalls"] == 1
    usage = alice.client.get("/api/v1/usage/").json()["totals"]
    assert (usage["jobs"], usage["calls"], usage["cost"]) == (1, 1, first.json()["cost"])
    assert Decimal(usage["cost"]) > 0
