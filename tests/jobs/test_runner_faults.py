"""Scripts that fail, loop, hog memory or flood their output, and an executor that is broken: each job ends with
a clear status and error code, its container is gone, and nothing is left running.

Real Docker throughout; the only "fault injection" is real too: a socket path with no engine behind it, an image
name that does not exist.
"""
import time
import uuid

import pytest

from jobs.sandbox.docker_backend import DockerBackend
from jobs.models import Job
from jobs.runner import run_job
from jobs.sandbox.spec import default_profile, hardened_spec, make_workdir_folders
from tests.support.containers import job_containers
from tests.support.jobs import make_job

pytestmark = pytest.mark.usefixtures("served_models")


def run(job: Job) -> Job:
    run_job(job.pk)
    return Job.objects.get(pk=job.pk)


def test_a_script_that_raises_fails_with_its_traceback_in_stderr(alice, job_work_root, docker_client):
    code = (
        "def handler(event, context):\n"
        "    print('about to fail')\n"
        "    raise ValueError('bad input: ' + str(event))\n"
    )
    job = run(make_job(alice, code, 42))
    assert job.status == "failed"
    assert job.error_code == "script_error"
    assert job.error_message == "ValueError: bad input: 42"
    assert job.exit_code == 1
    assert "Traceback (most recent call last)" in job.stderr
    assert "ValueError: bad input: 42" in job.stderr
    assert job.stdout == "about to fail\n"
    assert job.result is None
    assert job_containers(docker_client, job.pk) == []


def test_a_failed_job_is_still_answered_with_http_200(alice, job_work_root):
    job = run(make_job(alice, "raise RuntimeError('boom')\n"))
    response = alice.client.get(f"/status/{job.pk}")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["errorCode"], body["exitCode"]) == ("failed", "script_error", 1)
    assert "RuntimeError: boom" in body["stderr"]


def test_a_script_that_exits_nonzero_fails_with_its_exit_code(alice, job_work_root):
    job = run(make_job(alice, "import sys\nsys.exit(3)\n"))
    assert (job.status, job.exit_code) == ("failed", 3)


def test_a_script_that_exits_zero_through_sys_exit_succeeds(alice, job_work_root):
    job = run(make_job(alice, "import sys\nprint('bye')\nsys.exit(0)\n"))
    assert (job.status, job.exit_code, job.stdout) == ("succeeded", 0, "bye\n")


@pytest.mark.parametrize("value", ["{1, 2}", "object()", "float('nan')"])
def test_a_result_that_is_not_json_fails_the_job_instead_of_storing_its_repr(alice, job_work_root, value):
    job = run(make_job(alice, f"def handler(event, context):\n    return {value}\n"))
    assert (job.status, job.error_code, job.exit_code) == ("failed", "script_error", 1)
    assert job.error_message.startswith("ResultNotJSON:")
    assert job.result is None


def test_an_infinite_loop_is_timed_out_and_its_container_killed(alice, job_work_root, docker_client):
    job = run(make_job(alice, "while True:\n    pass\n", timeout_seconds=2))
    assert job.status == "timed_out"
    assert job.error_code == "timeout"
    assert "2 s" in job.error_message
    # The job's own time, from its start to its container's end: not the wall clock around `run`, which also holds
    # the container's creation and removal (seconds each on a loaded engine).
    assert 2000 <= job.duration_ms < 10_000
    assert job_containers(docker_client, job.pk) == []


def test_the_timeout_counts_from_the_start_not_from_when_the_worker_recorded_it(job_work_root):
    folders = make_workdir_folders(job_work_root / "slow-recorder")
    spec = hardened_spec(default_profile(), folders.path, job_id=str(uuid.uuid4()), env={}, with_input=False,
                         command=["python3", "-c", "import time; time.sleep(600)"], timeout_seconds=3)
    # A worker whose database write of the start waits 3 s for a lock: the job's 3 s are up when it is done.
    outcome = DockerBackend().run(spec, on_started=lambda container_id: time.sleep(3))
    assert outcome.timed_out
    assert 3000 <= outcome.duration_ms < 5000  # not 3 s more (6 s)


def test_a_sleeping_script_is_timed_out_too(alice, job_work_root):
    job = run(make_job(alice, "import time\nprint('waiting', flush=True)\ntime.sleep(600)\n", timeout_seconds=1))
    assert job.status == "timed_out"
    assert job.stdout == "waiting\n"


def test_a_memory_hog_fails_with_out_of_memory(alice, job_work_root, docker_client):
    code = (
        "chunks = []\n"
        "while True:\n"
        "    chunks.append(b'x' * (8 << 20))\n"
    )
    job = run(make_job(alice, code, memory_mb=64, timeout_seconds=30))
    assert job.status == "failed", (job.error_code, job.stderr)
    assert job.error_code == "out_of_memory"
    assert "64 MB" in job.error_message
    assert job_containers(docker_client, job.pk) == []


@pytest.mark.timeout(240)
def test_printing_gigabytes_is_capped_and_the_job_still_finishes(alice, job_work_root, settings):
    # One GiB to stdout in 64 KiB writes, a little to stderr. The worker keeps draining (and dropping) what is past
    # the cap, so the script is never blocked on a full pipe and ends well within its timeout.
    code = (
        "import sys\n"
        "chunk = 'x' * 65536\n"
        "for i in range(16384):\n"
        "    sys.stdout.write(chunk)\n"
        "sys.stdout.flush()\n"
        "print('the end', file=sys.stderr)\n"
    )
    job = run(make_job(alice, code, timeout_seconds=180))
    assert job.status == "succeeded", (job.error_code, job.stderr[-500:])
    assert len(job.stdout.encode()) == settings.JOB_OUTPUT_LIMIT_BYTES
    assert job.stdout_truncated is True
    assert job.stderr == "the end\n"
    assert job.stderr_truncated is False


def test_binary_output_with_nul_bytes_is_stored(alice, job_work_root):
    # PostgreSQL text refuses NUL; the runner replaces undecodable and NUL bytes instead of failing the job.
    code = "import os\nos.write(1, b'a\\x00b\\xff\\xfec')\n"
    job = run(make_job(alice, code))
    assert job.status == "succeeded"
    assert job.stdout.startswith("a") and job.stdout.endswith("c")
    assert "\x00" not in job.stdout


def test_the_docker_engine_down_fails_the_job_as_executor_unavailable(alice, job_work_root, settings,
                                                                        short_tmp):
    # A real failure: a socket path with no engine behind it (not waited for: see test_engine_restart).
    settings.DOCKER_HOST = f"unix://{short_tmp}/no-engine-here.sock"
    settings.JOB_ENGINE_WAIT_SECONDS = 0
    job = run(make_job(alice, "def handler(event, context):\n    return 1\n"))
    assert job.status == "failed"
    assert job.error_code == "executor_unavailable"
    assert job.finished_at is not None
    assert not (job_work_root / str(job.pk)).exists()


def test_the_docker_engine_down_through_an_explicit_backend_is_executor_unavailable(alice, job_work_root,
                                                                                     short_tmp, settings):
    from jobs.sandbox.docker_backend import DockerBackend

    settings.JOB_ENGINE_WAIT_SECONDS = 0
    job = make_job(alice, "def handler(event, context):\n    return 1\n")
    run_job(job.pk, backend=DockerBackend(base_url=f"unix://{short_tmp}/missing/docker.sock"))
    job.refresh_from_db()
    assert (job.status, job.error_code) == ("failed", "executor_unavailable")


def test_a_missing_runtime_image_fails_the_job_as_runtime_image_missing(alice, job_work_root, settings):
    settings.JOB_RUNTIME_IMAGE = "infra-ainode-runtime:no-such-tag-for-tests"
    job = run(make_job(alice, "def handler(event, context):\n    return 1\n"))
    assert job.status == "failed"
    assert job.error_code == "runtime_image_missing"
    assert "build-runtime-image.sh" in job.error_message
