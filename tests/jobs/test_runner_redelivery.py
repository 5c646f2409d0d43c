"""A message delivered twice never runs a job twice; a job whose worker vanished is failed, not left running.

The runner is called in-process, as a redelivered message would call it. What ran is counted from the Docker
engine's own event log, not from our code.
"""
import logging
import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from jobs.sandbox.docker_backend import JOB_LABEL
from jobs.models import Job
from jobs.runner import run_job
from tests.support.containers import container_creations, job_containers
from tests.support.jobs import make_job

pytestmark = pytest.mark.usefixtures("served_models")


CODE = "import time\ndef handler(event, context):\n    time.sleep(0.5)\n    return {'ran': context['jobId']}\n"


def test_a_job_delivered_twice_runs_one_container_and_keeps_one_result(alice, job_work_root, docker_client):
    since = time.time()
    job = make_job(alice, CODE)
    run_job(job.pk)
    job.refresh_from_db()
    first = (job.status, job.result, job.finished_at, job.container_id, job.worker_id)

    run_job(job.pk)  # the broker delivers the same message again
    job.refresh_from_db()
    assert job.deliveries == 2
    assert (job.status, job.result, job.finished_at, job.container_id, job.worker_id) == first
    assert first[0] == "succeeded"
    assert container_creations(docker_client, job.pk, since) == 1


def test_the_celery_task_run_twice_runs_the_job_once(alice, job_work_root, docker_client):
    from jobs.tasks import run_job_task

    since = time.time()
    job = make_job(alice, CODE)
    run_job_task.apply(args=[str(job.pk)])  # Celery's own task machinery, in this process
    run_job_task.apply(args=[str(job.pk)])
    job.refresh_from_db()
    assert (job.status, job.deliveries, job.result) == ("succeeded", 2, {"ran": str(job.pk)})
    assert container_creations(docker_client, job.pk, since) == 1


def test_two_deliveries_at_the_same_moment_start_one_container(alice, transactional_db, job_work_root,
                                                              docker_client):
    since = time.time()
    job = make_job(alice, CODE)
    barrier = threading.Barrier(2)

    def deliver() -> None:
        try:
            barrier.wait(5)
            run_job(job.pk)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    job.refresh_from_db()
    assert job.deliveries == 2
    assert job.status == "succeeded"
    assert job.result == {"ran": str(job.pk)}
    assert container_creations(docker_client, job.pk, since) == 1


def test_a_message_for_a_job_that_does_not_exist_is_dropped(db, settings, tmp_path, caplog):
    settings.JOB_WORK_ROOT = tmp_path
    missing = uuid.uuid4()

    with caplog.at_level(logging.WARNING, logger="jobs.sandbox.recovery"):
        run_job(missing)  # nothing to claim, nothing raised

    assert not Job.objects.exists()  # no row was made for it
    assert list(tmp_path.iterdir()) == []  # nothing was prepared to run
    assert [record.getMessage() for record in caplog.records] == [
        f"job {missing}: delivered but does not exist; dropped"]


def test_a_job_cancelled_while_queued_is_never_started(alice, job_work_root, docker_client):
    since = time.time()
    job = make_job(alice, CODE)
    response = alice.client.post(f"/api/v1/jobs/{job.pk}/cancel")
    assert response.status_code == 200
    run_job(job.pk)
    job.refresh_from_db()
    assert (job.status, job.deliveries, job.container_id) == ("cancelled", 1, "")
    assert container_creations(docker_client, job.pk, since) == 0


def _running_since(job: Job, seconds_ago: float, *, container_id: str = "3f2a9c1d0b7e") -> None:
    """As a worker that claimed the job and then died leaves it: by default after it started the job's container
    (its script may have run); with `container_id=""`, before."""
    Job.objects.filter(pk=job.pk).update(status="running", worker_id="a-worker-that-died", container_id=container_id,
                                         started_at=timezone.now() - timedelta(seconds=seconds_ago))


def test_a_job_whose_worker_was_lost_before_it_started_a_container_is_queued_again_and_runs_once(
        alice, job_work_root, settings, docker_client):
    from jobs.sandbox.recovery import recover_lost_jobs

    settings.JOB_LOST_GRACE_SECONDS = 0
    job = make_job(alice, CODE, timeout_seconds=1)
    _running_since(job, 3, container_id="")
    assert recover_lost_jobs() == 1
    job.refresh_from_db()
    assert (job.status, job.worker_id, job.started_at) == ("queued", "", None)
    since = time.time()
    run_job(job.pk)  # the message it was sent again with
    run_job(job.pk)  # and the dead worker's own, redelivered: not run twice
    job.refresh_from_db()
    assert job.status == "succeeded", (job.error_code, job.error_message)
    assert container_creations(docker_client, job.pk, since) == 1


def test_a_redelivered_job_still_within_its_time_is_left_to_its_worker(alice, job_work_root, docker_client):
    since = time.time()
    job = make_job(alice, CODE, timeout_seconds=30)
    _running_since(job, 1)
    run_job(job.pk)
    job.refresh_from_db()
    assert (job.status, job.worker_id, job.deliveries) == ("running", "a-worker-that-died", 1)
    assert container_creations(docker_client, job.pk, since) == 0


def test_a_redelivered_job_past_its_timeout_and_grace_is_failed_as_worker_lost(alice, job_work_root, settings,
                                                                               docker_client):
    since = time.time()
    job = make_job(alice, CODE, timeout_seconds=5)
    _running_since(job, 5 + settings.JOB_LOST_GRACE_SECONDS + 1)
    run_job(job.pk)
    job.refresh_from_db()
    assert (job.status, job.error_code) == ("failed", "worker_lost")
    assert job.finished_at is not None
    assert container_creations(docker_client, job.pk, since) == 0  # it is not run again


def test_the_worker_lost_grace_is_a_setting(alice, job_work_root, settings):
    settings.JOB_LOST_GRACE_SECONDS = 0
    job = make_job(alice, CODE, timeout_seconds=1)
    _running_since(job, 2)
    run_job(job.pk)
    job.refresh_from_db()
    assert (job.status, job.error_code) == ("failed", "worker_lost")


def test_a_lost_workers_container_is_removed_when_the_job_is_declared_lost(alice, job_work_root, settings,
                                                                           docker_client):
    job = make_job(alice, CODE, timeout_seconds=1)
    # What a worker killed mid-job leaves behind: its job's container, still running, labelled with the job id.
    orphan = docker_client.containers.run(
        settings.JOB_RUNTIME_IMAGE, ["sleep", "300"], labels={JOB_LABEL: str(job.pk)}, detach=True,
        network_mode="none", user="10001:10001", name=f"ainode-job-{job.pk}",
    )
    try:
        _running_since(job, 1 + settings.JOB_LOST_GRACE_SECONDS + 1)
        run_job(job.pk)
        job.refresh_from_db()
        assert (job.status, job.error_code) == ("failed", "worker_lost")
        assert job_containers(docker_client, job.pk) == []
    finally:
        try:
            orphan.remove(force=True)
        except Exception:
            pass


@pytest.mark.parametrize("status", ["succeeded", "failed", "timed_out", "cancelled"])
def test_a_finished_job_delivered_again_is_left_as_it_was(alice, job_work_root, docker_client, status):
    since = time.time()
    job = make_job(alice, CODE)
    Job.objects.filter(pk=job.pk).update(status=status, error_code="kept")
    run_job(job.pk)
    job.refresh_from_db()
    assert (job.status, job.error_code, job.deliveries) == (status, "kept", 1)
    assert container_creations(docker_client, job.pk, since) == 0


def test_recovery_fails_only_the_jobs_past_their_timeout_and_grace(alice, job_work_root, settings):
    from jobs.sandbox.recovery import recover_lost_jobs

    settings.JOB_LOST_GRACE_SECONDS = 1
    lost = make_job(alice, CODE, timeout_seconds=1)
    _running_since(lost, 5)
    alive = make_job(alice, CODE, timeout_seconds=60)
    _running_since(alive, 5)
    queued = make_job(alice, CODE, timeout_seconds=1)

    assert recover_lost_jobs() == 1
    statuses = {job.pk: (job.status, job.error_code) for job in Job.objects.all()}
    assert statuses[lost.pk] == ("failed", "worker_lost")
    assert statuses[alive.pk] == ("running", "")
    assert statuses[queued.pk] == ("queued", "")
