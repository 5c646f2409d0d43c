"""With REDIS_URL set, a finished job is also written to Redis as result:{jobId} (with a TTL) and published, so a
synchronous wait wakes at once; the Job row stays the source of truth."""
import json
import threading
import time

import pytest

from jobs.models import Job
from jobs.results import channel, wait_for_job
from jobs.runner import run_job
from tests.support.brokers import REDIS_TEST_URL
from tests.support.jobs import deploy, make_job, submit
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("served_models")


HANDLER = "def handler(event, context):\n    return {'echo': event}\n"


def test_a_finished_job_is_written_to_redis_with_a_ttl(alice, job_work_root, redis_results, settings):
    settings.RESULT_TTL_SECONDS = 600
    job = make_job(alice, HANDLER, {"k": "v"})
    run_job(job.pk)
    raw = redis_results.get(f"result:{job.pk}")
    assert raw is not None
    stored = json.loads(raw)
    assert (stored["jobId"], stored["status"], stored["result"]) == (str(job.pk), "succeeded", {"echo": {"k": "v"}})
    assert 0 < redis_results.ttl(f"result:{job.pk}") <= 600


def test_a_failed_job_is_written_to_redis_too(alice, job_work_root, redis_results):
    job = make_job(alice, "raise ValueError('x')\n")
    run_job(job.pk)
    stored = json.loads(redis_results.get(f"result:{job.pk}"))
    assert (stored["status"], stored["errorCode"]) == ("failed", "script_error")


def test_the_finished_result_is_published_on_the_jobs_channel(alice, job_work_root, redis_results):
    job = make_job(alice, HANDLER, 1)
    pubsub = redis_results.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel(job.pk))
    try:
        run_job(job.pk)
        message = None
        deadline = time.monotonic() + 5
        while message is None and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1)
        assert message is not None
        assert json.loads(message["data"])["status"] == "succeeded"
    finally:
        pubsub.close()


def test_the_wait_answers_at_once_for_a_job_that_finished_before_it_started_listening(alice, job_work_root,
                                                                                    redis_results):
    job = make_job(alice, HANDLER, 1)
    run_job(job.pk)  # the publish happened before anyone subscribed
    started = time.monotonic()
    waited = wait_for_job(job.pk, timeout=10)
    assert waited.status == "succeeded"
    assert time.monotonic() - started < 1


@pytest.mark.django_db(transaction=True)
def test_the_wait_wakes_when_the_result_is_published(alice, job_work_root, redis_results):
    from django.db import connections

    job = make_job(alice, "import time\ntime.sleep(1)\n", 1)

    def deliver() -> None:
        try:
            run_job(job.pk)
        finally:
            connections.close_all()

    runner = threading.Thread(target=deliver)
    runner.start()
    try:
        waited = wait_for_job(job.pk, timeout=60)
        assert waited.status == "succeeded"
    finally:
        runner.join(60)


def test_redis_being_down_does_not_fail_the_job(alice, job_work_root, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    job = make_job(alice, HANDLER, 1)
    run_job(job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded"
    assert wait_for_job(job.pk, timeout=1).status == "succeeded"


@pytest.fixture(scope="module")
def shared_worker_env() -> dict[str, str]:
    """The module's worker writes results to the test Redis."""
    return {"REDIS_URL": REDIS_TEST_URL}


@pytest.mark.django_db(transaction=True)
def test_a_worker_with_redis_answers_a_synchronous_run(running_worker, alice, redis_results, settings):
    settings.RUN_SYNC_TIMEOUT = 60
    function = deploy(alice, HANDLER)
    response = submit(alice, function["functionId"], {"via": "redis"}, asynchronous=False)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["result"] == {"echo": {"via": "redis"}}
    # The worker writes Redis just after the row (the source of truth), so the copy may lag the answer a little.
    raw = wait_for(lambda: redis_results.get(f"result:{body['jobId']}"), timeout=10, message="result in Redis")
    assert json.loads(raw)["status"] == "succeeded"
    assert redis_results.ttl(f"result:{body['jobId']}") > 0
    assert Job.objects.get(pk=body["jobId"]).status == "succeeded"
