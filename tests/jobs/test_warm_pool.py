"""Warm single-use containers: a job runs on a pooled container of its profile when one is ready, else cold; each
pooled container serves one job and leaves no trace for the next; limits count from the job's start."""
import time

import pytest

from jobs.sandbox.docker_backend import POOL_LABEL
from jobs.runner import run_job
from jobs.sandbox.spec import default_profile, job_profile, profile_of
from tests.support.containers import container_creations, job_containers, make_warm_pool
from tests.support.jobs import make_job, run_in_thread
from tests.support.waiting import pool_ready_timeout, wait_for

pytestmark = pytest.mark.usefixtures("served_models")

CONSTANT = "def handler(event, context):\n    return {'answer': 42, 'input': event}\n"


def pool_containers(docker_client, pool) -> list:
    return docker_client.containers.list(all=True, filters={"label": f"{POOL_LABEL}={pool.owner}"},
                                         ignore_removed=True)


def run(job):
    run_job(job.pk)
    job.refresh_from_db()
    return job


def test_a_job_runs_on_the_ready_container_of_its_profile_and_the_container_is_removed_after(
        alice, warm_pool, docker_client, job_work_root):
    slot = warm_pool.fill(default_profile())
    job = run(make_job(alice, CONSTANT, input_data={"n": 1}))
    assert job.status == "succeeded", (job.error_code, job.stderr)
    assert job.result == {"answer": 42, "input": {"n": 1}}
    assert job.container_id == slot.container_id
    assert warm_pool.ready_count() == 0
    # Both go in the background, the folder after the container (which mounts it).
    wait_for(lambda: not pool_containers(docker_client, warm_pool) and not slot.path.exists(), timeout=20,
             message="the used container and its folder to go")


def test_with_the_pool_empty_a_job_takes_the_cold_path(alice, warm_pool, docker_client):
    since = time.time()
    job = run(make_job(alice, CONSTANT))
    assert job.status == "succeeded", job.stderr
    assert container_creations(docker_client, job.pk, since) == 1  # a container made for this job, by its id
    assert job_containers(docker_client, job.pk) == []


def test_a_job_whose_profile_has_no_pool_takes_the_cold_path_and_its_profile_is_warmed_once_two_owners_ask(
        alice, bob, warm_pool, docker_client):
    slot = warm_pool.fill(default_profile())
    job = make_job(alice, CONSTANT, memory_mb=128)
    since = time.time()
    job = run(job)
    assert job.status == "succeeded", job.stderr
    assert job.container_id != slot.container_id
    assert container_creations(docker_client, job.pk, since) == 1
    assert warm_pool.ready_count(default_profile()) == 1  # the default profile's container is still waiting
    assert job_profile(job) not in warm_pool._wanted  # one owner's size is not warmed for everyone
    assert run(make_job(bob, CONSTANT, memory_mb=128)).status == "succeeded"
    assert job_profile(job) in warm_pool._wanted


def test_one_owner_cannot_evict_the_default_profile_with_odd_sizes(alice, job_work_root):
    pool = make_warm_pool(job_work_root, size=1)
    pool._pinned.add(default_profile())
    pool._wanted[default_profile()] = time.monotonic()
    sizes = [profile_of(memory_mb=memory_mb) for memory_mb in range(100, 110)]  # more than max_profiles
    for _ in range(3):  # each asked again and again, as a hot function's would be
        for profile in sizes:
            assert pool.take(profile, owner=alice.id) is None
    # Alice's hot size is warmed for her, one at a time; the default stays, whatever she asks for.
    assert default_profile() in pool._wanted and len(pool._wanted) == 2
    for profile in sizes:  # asked by a second owner too: shared, warmed up to max_profiles besides the default
        pool.take(profile, owner="someone else")
    assert default_profile() in pool._wanted
    assert len(pool._wanted) == 1 + pool.max_profiles


def test_the_pool_on_means_a_started_pool_keeps_its_size_ready(alice, job_work_root, docker_client):
    pool = make_warm_pool(job_work_root, size=2).start([default_profile()])
    try:
        wait_for(lambda: pool.ready_count(default_profile()) == 2, timeout=pool_ready_timeout(2),
                 message="two ready containers")
        containers = pool_containers(docker_client, pool)
        assert len(containers) == 2
        assert {c.status for c in containers} == {"running"}
        slot = pool.take(default_profile())
        # Refilled in the background, off the job's path.
        wait_for(lambda: pool.ready_count(default_profile()) == 2, timeout=pool_ready_timeout(),
                 message="the pool to refill")
        pool.release(slot)
    finally:
        pool.stop()
    assert pool_containers(docker_client, pool) == []  # a pool that stops removes its containers
    assert list(job_work_root.iterdir()) == []


def test_the_pool_off_means_no_container_is_made_ahead(alice, settings, docker_client):
    from jobs.sandbox import warm_pool as pools
    from jobs.sandbox.engine import start_warm_pool

    settings.WARM_POOL_SIZE = 0
    assert start_warm_pool() is None
    assert pools.current() is None


def test_a_pooled_container_killed_before_its_job_arrives_is_passed_over_and_the_job_runs_cold(
        alice, warm_pool, docker_client):
    slot = warm_pool.fill(default_profile())
    docker_client.containers.get(slot.container_id).kill()
    job = make_job(alice, CONSTANT)
    since = time.time()
    job = run(job)
    assert job.status == "succeeded", (job.error_code, job.stderr)
    assert job.container_id != slot.container_id
    assert container_creations(docker_client, job.pk, since) == 1
    wait_for(lambda: not pool_containers(docker_client, warm_pool), timeout=20, message="the dead one to be removed")


def test_a_pooled_container_removed_before_its_job_arrives_is_passed_over_and_the_job_runs_cold(
        alice, warm_pool, docker_client):
    slot = warm_pool.fill(default_profile())
    docker_client.containers.get(slot.container_id).remove(force=True)
    job = run(make_job(alice, CONSTANT))
    assert job.status == "succeeded", (job.error_code, job.stderr)
    assert job.container_id != slot.container_id


def test_a_pooled_container_that_dies_while_waiting_is_replaced(alice, job_work_root, docker_client, monkeypatch):
    from jobs.sandbox import warm_pool as pools

    monkeypatch.setattr(pools, "CHECK_SECONDS", 0.2)
    pool = make_warm_pool(job_work_root, size=1).start([default_profile()])
    try:
        wait_for(lambda: pool.ready_count() == 1, timeout=pool_ready_timeout(), message="a ready container")
        (first,) = pool_containers(docker_client, pool)
        first.kill()

        def replaced() -> bool:
            running = [c for c in pool_containers(docker_client, pool) if c.status == "running"]
            return pool.ready_count() == 1 and len(running) == 1 and running[0].id != first.id

        wait_for(replaced, timeout=pool_ready_timeout(), message="the dead container to be replaced")
    finally:
        pool.stop()


def test_a_container_made_while_the_pool_checks_for_dead_ones_is_kept(job_work_root, docker_client, monkeypatch):
    """The check asks the engine which containers run, then retires the ready ones missing from the answer. A slot
    filled on another thread in between is missing from it although it runs, and must not be taken for dead."""
    pool = make_warm_pool(job_work_root)  # not started: the check below is the only one
    backend = pool._backend_factory()
    ask_the_engine = backend.labelled

    def a_fill_lands_after_the_answer(label: str) -> list:
        answer = ask_the_engine(label)
        pool.fill(default_profile(), backend=backend)
        return answer

    monkeypatch.setattr(backend, "labelled", a_fill_lands_after_the_answer)
    try:
        pool._prune(backend)
        assert pool.ready_count() == 1
        monkeypatch.undo()
        pool._prune(backend)  # the next check sees it running
        assert pool.ready_count() == 1
    finally:
        pool.stop()
    assert not pool_containers(docker_client, pool)


def test_a_pooled_container_older_than_the_maximum_age_is_not_used(alice, job_work_root, docker_client):
    from jobs.sandbox import warm_pool as pools

    pool = make_warm_pool(job_work_root, max_age_seconds=1).start()
    previous = pools.install(pool)
    try:
        slot = pool.fill(default_profile())
        time.sleep(1.5)
        job = run(make_job(alice, CONSTANT))
        assert job.status == "succeeded", job.stderr
        assert job.container_id != slot.container_id
    finally:
        pools.install(previous)
        pool.stop()


def test_the_timeout_counts_from_the_jobs_start_not_the_containers(alice, warm_pool):
    warm_pool.fill(default_profile())
    time.sleep(3)  # the container has waited longer than the job may run
    job = run(make_job(alice, "import time\ntime.sleep(1)\nprint('slept')\n", timeout_seconds=2))
    assert job.status == "succeeded", (job.error_code, job.stderr)
    assert job.stdout == "slept\n"
    assert 1000 <= job.duration_ms < 2000


def test_a_pooled_job_past_its_timeout_is_timed_out_and_its_container_removed(alice, warm_pool, docker_client):
    slot = warm_pool.fill(default_profile())
    job = run(make_job(alice, "import time\nprint('waiting', flush=True)\ntime.sleep(600)\n", timeout_seconds=2))
    assert job.status == "timed_out"
    assert job.error_code == "timeout"
    assert job.stdout == "waiting\n"
    assert job.container_id == slot.container_id
    # The job's own time, from the moment it was handed its job: not the wall clock around `run`, which also holds
    # the engine's calls around it (seconds each on a loaded engine).
    assert 2000 <= job.duration_ms < 10_000
    wait_for(lambda: not pool_containers(docker_client, warm_pool), timeout=20, message="the container to go")


def test_a_pooled_memory_hog_fails_with_out_of_memory(alice, warm_pool):
    code = "chunks = []\nwhile True:\n    chunks.append(b'x' * (8 << 20))\n"
    job = make_job(alice, code, memory_mb=64, timeout_seconds=30)
    slot = warm_pool.fill(job_profile(job))
    job = run(job)
    assert job.container_id == slot.container_id
    assert (job.status, job.error_code) == ("failed", "out_of_memory"), job.stderr
    assert "64 MB" in job.error_message


def test_the_output_cap_holds_on_a_pooled_container(alice, warm_pool, settings):
    settings.JOB_OUTPUT_LIMIT_BYTES = 4096
    slot = warm_pool.fill(default_profile())
    job = run(make_job(alice, "import sys\nfor _ in range(1000):\n    sys.stdout.write('x' * 1000 + '\\n')\n"))
    assert job.container_id == slot.container_id
    assert job.status == "succeeded", job.stderr
    assert len(job.stdout) == 4096
    assert job.stdout_truncated is True


def test_cancelling_a_job_on_a_pooled_container_kills_it(alice, transactional_db, warm_pool, docker_client):
    slot = warm_pool.fill(default_profile())
    job = make_job(alice, "import time\nprint('started', flush=True)\ntime.sleep(120)\n", timeout_seconds=100)
    runner = run_in_thread(job.pk)

    def running() -> bool:
        job.refresh_from_db()
        return job.status == "running" and bool(job.container_id)

    try:
        wait_for(running, timeout=30, message="the job to be running")
        time.sleep(0.5)
        cancelled_at = time.monotonic()
        response = alice.client.post(f"/api/v1/jobs/{job.pk}/cancel")
        assert response.status_code == 200, response.content
        runner.join(20)
    finally:
        if runner.is_alive():
            docker_client.containers.get(slot.container_id).remove(force=True)
            runner.join(20)
    assert time.monotonic() - cancelled_at < 10
    job.refresh_from_db()
    assert (job.status, job.error_code, job.exit_code) == ("cancelled", "cancelled", 137)
    assert job.stdout == "started\n"
    assert job.container_id == slot.container_id


LEAVE_TRACES = """
import os, subprocess

def handler(event, context):
    with open('/tmp/secret-of-job-one', 'w') as handle:
        handle.write('one')
    with open(os.path.join(os.environ['OUTPUT_DIR'], 'secret-of-job-one'), 'w') as handle:
        handle.write('one')
    os.environ['SECRET_OF_JOB_ONE'] = 'one'
    subprocess.Popen(['sleep', '300'], start_new_session=True)
    return os.environ['JOB_ID']
"""

LOOK_FOR_TRACES = """
import os

def handler(event, context):
    processes = []
    for pid in os.listdir('/proc'):
        if pid.isdigit():
            try:
                with open(f'/proc/{pid}/cmdline', 'rb') as handle:
                    processes.append(handle.read().replace(b'\\0', b' ').decode().strip())
            except OSError:
                pass
    return {
        'tmp': sorted(os.listdir('/tmp')),
        'output': sorted(os.listdir(os.environ['OUTPUT_DIR'])),
        'processes': processes,
        'environment': dict(os.environ),
        'socketFolder': sorted(os.listdir('/run/ainode')),
    }
"""


def test_a_pooled_job_finds_no_trace_of_the_job_before_it(alice, warm_pool):
    first_slot = warm_pool.fill(default_profile())
    warm_pool.fill(default_profile())
    first = run(make_job(alice, LEAVE_TRACES, env={"FIRST_ONLY": "yes"}))
    assert first.status == "succeeded", first.stderr
    assert first.container_id == first_slot.container_id
    second = run(make_job(alice, LOOK_FOR_TRACES))
    assert second.status == "succeeded", second.stderr
    assert second.container_id not in ("", first.container_id)
    seen = second.result
    assert seen["tmp"] == []
    assert seen["output"] == []
    assert not any("sleep" in command for command in seen["processes"]), seen["processes"]
    # Only the init process, the runtime running this script, and nothing else.
    assert len(seen["processes"]) == 2, seen["processes"]
    environment = seen["environment"]
    assert "SECRET_OF_JOB_ONE" not in environment and "FIRST_ONLY" not in environment
    assert environment["JOB_ID"] == str(second.pk) != first.result
    assert not any(key.startswith("AINODE_") for key in environment)
    assert seen["socketFolder"] == ["gateway.sock"]  # the start signal is gone once it was given


def test_stopping_a_pool_removes_its_own_containers_only(alice, job_work_root, docker_client):
    mine = make_warm_pool(job_work_root).start()
    theirs = make_warm_pool(job_work_root).start()
    try:
        mine.fill(default_profile())
        theirs.fill(default_profile())
        mine.stop()
        assert pool_containers(docker_client, mine) == []
        assert len(pool_containers(docker_client, theirs)) == 1
    finally:
        theirs.stop()
    assert pool_containers(docker_client, theirs) == []
