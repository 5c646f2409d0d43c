"""A real Celery worker with the warm pool on and off: its jobs run on containers it started ahead; it removes its
pool when it stops, and a worker that starts removes the pool (and the running job's container) of one that died."""
import os
import socket
import time
from pathlib import Path

import pytest

from jobs.models import Job
from jobs.sandbox.docker_backend import POOL_LABEL
from jobs.sandbox.pool_containers import HOST_LABEL, PID_LABEL, SLOT_LABEL
from tests.support.jobs import deploy, submit
from tests.support.waiting import pool_ready_timeout, wait_for, wait_for_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("served_models")]

CONSTANT = "def handler(event, context):\n    return 'warm'\n"


def pool_of(docker_client, worker) -> list:
    """The pool containers that `worker`'s process owns (found by the owner's pid on this host)."""
    return docker_client.containers.list(all=True, filters={"label": [
        POOL_LABEL, f"{HOST_LABEL}={socket.gethostname()}", f"{PID_LABEL}={worker.process.pid}"]}, ignore_removed=True)


def running_pool_of(docker_client, worker) -> list:
    return [c for c in pool_of(docker_client, worker) if c.status == "running"]


def ready_pool_of(docker_client, worker) -> list:
    """The running pool containers whose runtime waits on its start FIFO (what the pool calls ready)."""
    ready = []
    for container in running_pool_of(docker_client, worker):
        try:
            os.close(os.open(Path(container.labels[SLOT_LABEL]) / "run" / "start", os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            continue
        ready.append(container)
    if ready:
        time.sleep(0.2)  # the pool's own probe, every 10 ms, has seen it too
    return ready


def test_a_worker_with_the_pool_on_runs_its_jobs_on_containers_started_ahead(
        worker, alice, _isolated_broker, docker_client):
    running = worker(_isolated_broker, WARM_POOL_SIZE=1)
    wait_for(lambda: ready_pool_of(docker_client, running), timeout=pool_ready_timeout(), message="the worker's pool")
    ahead = {c.id for c in running_pool_of(docker_client, running)}
    function = deploy(alice, CONSTANT)
    job_id = submit(alice, function["functionId"]).json()["jobId"]
    body = wait_for_status(alice, job_id, timeout=60)
    assert (body["status"], body["result"]) == ("succeeded", "warm")
    assert Job.objects.get(pk=job_id).container_id in ahead
    # The used container is gone and a fresh one waits in its place.
    wait_for(lambda: {c.id for c in running_pool_of(docker_client, running)} - ahead, timeout=pool_ready_timeout(),
             message="the pool to refill")
    wait_for(lambda: not ahead & {c.id for c in pool_of(docker_client, running)}, timeout=20,
             message="the used container to be removed")
    running.stop()
    assert pool_of(docker_client, running) == []  # a worker that stops removes its pool


def test_a_worker_with_the_pool_off_starts_no_container_ahead(worker, alice, _isolated_broker, docker_client):
    running = worker(_isolated_broker, WARM_POOL_SIZE=0)
    function = deploy(alice, CONSTANT)
    job_id = submit(alice, function["functionId"]).json()["jobId"]
    assert wait_for_status(alice, job_id, timeout=60)["status"] == "succeeded"
    assert pool_of(docker_client, running) == []


def test_a_worker_that_starts_removes_the_pool_and_running_job_of_a_worker_that_died(
        worker, alice, _isolated_broker, docker_client):
    doomed = worker(_isolated_broker, WARM_POOL_SIZE=1, JOB_LOST_GRACE_SECONDS=1)
    wait_for(lambda: ready_pool_of(docker_client, doomed), timeout=pool_ready_timeout(),
             message="the doomed worker's pool")
    function = deploy(alice, "import time\ntime.sleep(600)\n", timeout_seconds=2)
    job_id = submit(alice, function["functionId"]).json()["jobId"]

    def running_warm() -> bool:
        job = Job.objects.get(pk=job_id)
        return job.status == "running" and job.container_id in {c.id for c in pool_of(docker_client, doomed)}

    wait_for(running_warm, timeout=60, message="the job to run on a pooled container")
    wait_for(lambda: len(running_pool_of(docker_client, doomed)) == 2, timeout=pool_ready_timeout(),
             message="the doomed pool to refill beside the running job")
    doomed.kill()
    assert len(running_pool_of(docker_client, doomed)) == 2  # a killed worker tidies nothing up
    started_at = Job.objects.get(pk=job_id).started_at
    time.sleep(max(0.0, started_at.timestamp() + 2 + 1 + 0.5 - time.time()))

    successor = worker(_isolated_broker, WARM_POOL_SIZE=1, JOB_LOST_GRACE_SECONDS=1)
    assert pool_of(docker_client, doomed) == []  # removed before the successor said it was ready
    body = wait_for_status(alice, job_id, timeout=30)
    assert (body["status"], body["errorCode"]) == ("failed", "worker_lost")
    wait_for(lambda: running_pool_of(docker_client, successor), timeout=pool_ready_timeout(),
             message="the successor's own pool")
