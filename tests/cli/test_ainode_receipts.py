"""`ainode receipts verify`, run as a customer would against the live API, on the receipts of real jobs (run
in-process in a real container, calling the real local model): everything verifies untouched, and each kind of
tampering with the receipts it was given, or with the figures the API answers beside them, is named and exits 9."""
import hashlib
import json
from collections.abc import Callable

import pytest
from django.db.models import F
from django.utils import timezone

from billing.models import UsageDaily
from jobs import services
from jobs.models import Job, Receipt
from jobs.runner import run_job
from tests.support.receipts import swap_seq

TWO_CALLS = '''
import ai_client


def handler(event, context):
    return [ai_client.generate(p, temperature=0, seed=1, max_tokens=4) for p in ("One.", "Two.")]
'''


@pytest.fixture
def job_of_alice(api, real_models, job_work_root) -> Callable[[], Job]:
    def run() -> Job:
        function = services.deploy_function(owner=api.account.user, name="two-calls", code=TWO_CALLS.encode())
        job = services.submit_job(owner=api.account.user, function=function, model_id=real_models[0],
                                  input_data=None)
        run_job(job.pk)
        return Job.objects.get(pk=job.pk)

    return run


def test_an_untouched_job_and_day_verify(ainode, job_of_alice):
    job = job_of_alice()

    result = ainode("receipts", "verify", str(job.pk))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "3 receipts of 1 jobs: all verified"
    since = ainode("receipts", "verify", "--since", timezone.localdate().isoformat(), "--json")
    assert since.returncode == 0, since.stdout + since.stderr
    assert json.loads(since.stdout)["jobs"] == [{"jobId": str(job.pk), "receipts": 3, "ok": True}]


def test_an_edited_receipt_is_named(ainode, job_of_alice):
    job = job_of_alice()
    receipt = Receipt.objects.get(job=job, seq=2)
    edited = receipt.body.replace('"completionTokens":', '"completionTokens":1')
    Receipt.objects.filter(pk=receipt.pk).update(body=edited)

    result = ainode("receipts", "verify", str(job.pk))
    assert result.returncode == 9
    assert f"FAILED job {job.pk}, receipt 2: its text does not hash to its hash (edited)" in result.stdout


def test_a_deleted_receipt_is_named(ainode, job_of_alice):
    job = job_of_alice()
    Receipt.objects.filter(job=job, seq=1).delete()

    result = ainode("receipts", "verify", str(job.pk))
    assert result.returncode == 9
    assert f"FAILED job {job.pk}, receipt 1: it says it is receipt 2 of job {job.pk} (missing or moved)" in (
        result.stdout)


def test_a_forged_receipt_is_named(ainode, job_of_alice):
    job = job_of_alice()
    receipt = Receipt.objects.get(job=job, seq=1)
    forged = receipt.body.replace('"promptTokens":', '"promptTokens":9')
    Receipt.objects.filter(pk=receipt.pk).update(body=forged, hash=hashlib.sha256(forged.encode()).hexdigest())

    result = ainode("receipts", "verify", str(job.pk))
    assert result.returncode == 9
    assert f"FAILED job {job.pk}, receipt 1: its signature does not verify with key {receipt.key_id} (forged)" in (
        result.stdout)


def test_swapped_receipts_are_named(ainode, job_of_alice):
    job = job_of_alice()
    swap_seq(job, 1, 2)

    result = ainode("receipts", "verify", str(job.pk))
    assert result.returncode == 9
    assert f"FAILED job {job.pk}, receipt 1: it says it is receipt 2 of job {job.pk} (missing or moved)" in (
        result.stdout)


def test_a_result_or_usage_that_does_not_add_up_is_named(ainode, job_of_alice):
    job = job_of_alice()
    Job.objects.filter(pk=job.pk).update(completion_tokens=F("completion_tokens") + 5)

    result = ainode("receipts", "verify", "--since", timezone.localdate().isoformat())
    assert result.returncode == 9
    assert f"FAILED job {job.pk}: its result's completionTokens is {job.completion_tokens + 5}" in result.stdout

    Job.objects.filter(pk=job.pk).update(completion_tokens=job.completion_tokens)
    UsageDaily.objects.update(prompt_tokens=F("prompt_tokens") + 1)
    result = ainode("receipts", "verify", "--since", timezone.localdate().isoformat())
    assert result.returncode == 9
    assert f"FAILED usage of {timezone.localdate().isoformat()}: the usage API says" in result.stdout


def test_verify_needs_a_job_or_a_day(ainode):
    assert ainode("receipts", "verify").returncode == 2
