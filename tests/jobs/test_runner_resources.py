"""What the runner records and cleans up: peak memory, duration, the container and work folder, and a cancel
that kills a running job's container."""
import time

import pytest

from jobs.runner import run_job
from tests.support.containers import job_containers
from tests.support.jobs import make_job, run_in_thread
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("served_models")


def test_peak_memory_and_duration_are_recorded(alice, job_work_root):
    code = (
        "import time\n"
        "def handler(event, context):\n"
        "    block = b'x' * (40 << 20)\n"
        "    time.sleep(0.5)\n"
        "    return len(block)\n"
    )
    job = make_job(alice, code, memory_mb=128)
    run_job(job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded", job.stderr
    assert job.peak_memory_bytes >= 40 << 20
    assert job.peak_memory_bytes < 128 << 20
    assert 500 <= job.duration_ms < 10_000
    assert job.started_at <= job.finished_at
    assert job.worker_id
    body = alice.client.get(f"/status/{job.pk}").json()
    assert body["peakMemoryBytes"] == job.peak_memory_bytes
    assert body["durationMs"] == job.duration_ms


def test_the_container_and_work_folder_are_removed_after_success(alice, job_work_root, docker_client):
    job = make_job(alice, "def handler(event, context):\n    return 'done'\n")
    run_job(job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded"
    assert job.container_id  # it did run in a container...
    assert job_containers(docker_client, job.pk) == []  # ...which is gone
    assert list(job_work_root.iterdir()) == []


def test_the_container_and_work_folder_are_removed_after_a_failure(alice, job_work_root, docker_client):
    job = make_job(alice, "raise SystemExit('no')\n")
    run_job(job.pk)
    job.refresh_from_db()
    assert job.status == "failed"
    assert job_containers(docker_client, job.pk) == []
    assert list(job_work_root.iterdir()) == []


def test_containers_are_labelled_with_their_job_id_while_they_run(alice, transactional_db, job_work_root,
                                                                  docker_client):
    from jobs.sandbox.docker_backend import JOB_LABEL

    job = make_job(alice, "import time\ntime.sleep(2)\n", timeout_seconds=20)
    runner = run_in_thread(job.pk)
    wait_for(lambda: job_containers(docker_client, job.pk), timeout=20, message="the job's container")
    (container,) = job_containers(docker_client, job.pk)
    assert container.labels[JOB_LABEL] == str(job.pk)
    runner.join(30)
    assert job_containers(docker_client, job.pk) == []


def test_cancelling_a_running_job_kills_its_container(alice, transactional_db, job_work_root, docker_client):
    code = "import time\nprint('started', flush=True)\ntime.sleep(120)\n"
    job = make_job(alice, code, timeout_seconds=100)
    runner = run_in_thread(job.pk)

    def running_in_its_container() -> bool:
        job.refresh_from_db()
        return job.status == "running" and bool(job.container_id)

    try:
        wait_for(running_in_its_container, timeout=30, message="the job to be running in a container")
        time.sleep(0.5)  # let the script print before it is killed
        cancelled_at = time.monotonic()
        response = alice.client.post(f"/api/v1/jobs/{job.pk}/cancel")
        assert response.status_code == 200, response.content
        assert response.json()["status"] == "cancelled"
        runner.join(20)
    finally:
        if runner.is_alive():  # the test failed: do not leave the container running after this process ends
            for container in job_containers(docker_client, job.pk):
                container.remove(force=True)
            runner.join(20)
    assert time.monotonic() - cancelled_at < 10  # killed, not left to sleep or time out
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert job.error_code == "cancelled"
    assert job.stdout == "started\n"  # the output up to the kill is still kept for the user
    assert job.exit_code == 137
    assert job_containers(docker_client, job.pk) == []
