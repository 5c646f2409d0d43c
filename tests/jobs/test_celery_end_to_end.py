"""End to end through a real broker and a real Celery worker process: the API enqueues, the worker runs the job
in Docker, the API answers the result. Each test runs over kombu's filesystem transport and over SQS
(moto_server). The tests share the module's worker of each kind, except the one that starts its worker late."""
import time

import pytest

from jobs.dispatch import enqueue_job
from jobs.models import Job
from tests.support.containers import container_creations
from tests.support.jobs import deploy, submit
from tests.support.waiting import wait_for, wait_for_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("served_models")]


CODE = (
    "import os\n"
    "def handler(event, context):\n"
    "    print('working on', event)\n"
    "    return {'sum': sum(event['numbers']), 'model': os.environ['LLM_MODEL']}\n"
)


def test_a_job_submitted_with_x_async_is_run_by_the_worker(running_worker, alice):
    function = deploy(alice, CODE)
    response = submit(alice, function["functionId"], {"numbers": [1, 2, 3]}, model_id="smollm2:135m")
    assert response.status_code == 202, response.content
    job_id = response.json()["jobId"]

    body = wait_for_status(alice, job_id)
    assert body["status"] == "succeeded", body
    assert body["result"] == {"sum": 6, "model": "smollm2:135m"}
    assert body["stdout"] == "working on {'numbers': [1, 2, 3]}\n"
    assert body["workerId"] == running_worker.worker_id
    assert body["exitCode"] == 0
    assert Job.objects.get(pk=job_id).deliveries == 1
    same = alice.client.get(f"/api/v1/jobs/{job_id}/").json()
    assert (same["status"], same["result"]) == ("succeeded", body["result"])


def test_a_synchronous_run_answers_the_result(running_worker, alice, settings):
    settings.RUN_SYNC_TIMEOUT = 60
    function = deploy(alice, CODE)
    response = submit(alice, function["functionId"], {"numbers": [40, 2]}, asynchronous=False)
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["result"]["sum"]) == ("succeeded", 42)
    assert body["requestId"] == body["jobId"]


def test_a_failing_script_is_a_failed_job_answered_with_200(running_worker, alice, settings):
    settings.RUN_SYNC_TIMEOUT = 60
    function = deploy(alice, "def handler(event, context):\n    raise KeyError('missing')\n")
    response = submit(alice, function["functionId"], {}, asynchronous=False)
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["errorCode"]) == ("failed", "script_error")
    assert "KeyError: 'missing'" in body["stderr"]


def test_a_message_delivered_again_does_not_run_the_job_again(running_worker, alice, docker_client):
    since = time.time()
    function = deploy(alice, CODE)
    job_id = submit(alice, function["functionId"], {"numbers": [1]}).json()["jobId"]
    first = wait_for_status(alice, job_id)
    assert first["status"] == "succeeded"

    enqueue_job(job_id, Job.objects.get(pk=job_id).queue)  # the broker hands the same job over once more
    wait_for(lambda: Job.objects.get(pk=job_id).deliveries == 2, timeout=30, message="the second delivery")
    again = alice.client.get(f"/status/{job_id}").json()
    assert again == first
    assert container_creations(docker_client, job_id, since) == 1


def test_jobs_queued_before_the_worker_starts_are_run_when_it_starts(broker, worker, alice):
    function = deploy(alice, CODE)
    job_ids = [submit(alice, function["functionId"], {"numbers": [n]}).json()["jobId"] for n in range(3)]
    assert set(Job.objects.values_list("status", flat=True)) == {"queued"}
    worker(broker)
    results = [wait_for_status(alice, job_id) for job_id in job_ids]
    assert [body["result"]["sum"] for body in results] == [0, 1, 2]
