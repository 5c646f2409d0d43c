"""A worker killed in the middle of a job (SIGKILL: it can tidy nothing up). The job must not stay `running`
forever, must never run twice, and its orphaned container must go.

Over SQS the message comes back after its visibility timeout (kept short here) to another worker, which finds the
job past its timeout and grace and fails it as `worker_lost`. The filesystem transport does not redeliver: there
the next worker to start recovers the job (a worker also recovers such jobs when it starts).
"""
import time

import pytest

from jobs.models import Job
from tests.support.brokers import sqs_broker
from tests.support.containers import container_creations, job_containers
from tests.support.jobs import deploy, submit
from tests.support.waiting import wait_for, wait_for_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("served_models")]


TIMEOUT = 3
GRACE = 1
SLEEPER = "import time\nprint('started', flush=True)\ntime.sleep(600)\n"


def _start_and_kill(worker, broker, alice, docker_client, timeout: int = TIMEOUT):
    doomed = worker(broker, JOB_LOST_GRACE_SECONDS=GRACE)
    function = deploy(alice, SLEEPER, timeout_seconds=timeout)
    job_id = submit(alice, function["functionId"]).json()["jobId"]

    def running_in_a_container() -> bool:
        job = Job.objects.get(pk=job_id)
        return job.status == "running" and bool(job.container_id) and bool(job_containers(docker_client, job_id))

    wait_for(running_in_a_container, timeout=60, message="the job to run")
    doomed.kill()
    # The dead worker's container is still there: nobody enforces its timeout any more.
    assert job_containers(docker_client, job_id)
    return job_id


def test_a_job_whose_worker_is_killed_over_sqs_ends_as_worker_lost_and_never_runs_twice(
        worker, alice, use_broker, short_tmp, moto_endpoint, docker_client):
    since = time.time()
    # The new worker is up long before timeout + grace (6 + 1 s) has passed, so its start-up recovery leaves the
    # job alone; the message comes back 10 s after the first worker took it, when the job is past that.
    broker = use_broker(sqs_broker(short_tmp / "var", moto_endpoint, visibility_timeout=10))
    job_id = _start_and_kill(worker, broker, alice, docker_client, timeout=6)

    worker(broker, JOB_LOST_GRACE_SECONDS=GRACE)
    body = wait_for_status(alice, job_id, timeout=60)
    assert (body["status"], body["errorCode"]) == ("failed", "worker_lost")
    # The message did come back (on a slow start the worker's own recovery may have come first)...
    wait_for(lambda: Job.objects.get(pk=job_id).deliveries == 2, timeout=30, message="the redelivery")
    assert Job.objects.get(pk=job_id).status == "failed"
    assert container_creations(docker_client, job_id, since) == 1  # ...and the job was not run again
    wait_for(lambda: job_containers(docker_client, job_id) == [], timeout=20, message="the orphan to be removed")


def test_a_job_whose_worker_is_killed_over_the_filesystem_broker_is_recovered_by_the_next_worker(
        worker, alice, _isolated_broker, docker_client):
    since = time.time()
    job_id = _start_and_kill(worker, _isolated_broker, alice, docker_client)
    started_at = Job.objects.get(pk=job_id).started_at
    time.sleep(max(0.0, started_at.timestamp() + TIMEOUT + GRACE + 0.5 - time.time()))

    worker(_isolated_broker, JOB_LOST_GRACE_SECONDS=GRACE)
    body = wait_for_status(alice, job_id, timeout=30)
    assert (body["status"], body["errorCode"]) == ("failed", "worker_lost")
    assert container_creations(docker_client, job_id, since) == 1
    assert job_containers(docker_client, job_id) == []
