"""A full disk under the work root costs time, not the worker: a job whose files cannot be written waits for room
(JOB_DISK_WAIT_SECONDS) and runs once there is some; past the wait it fails with `work_disk_full` before its script
ran (nothing of it reaches the ledger), and once there is room again the next job runs. The filesystem is a real
one, small: a 2 MB tmpfs the test mounts and fills."""
from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.models import Job, LLMCall
from jobs.runner import run_job
from tests.support.jobs import make_job

pytestmark = pytest.mark.usefixtures("served_models")


@pytest.fixture
def small_disk(short_tmp: Path) -> Iterator[Path]:
    mount = short_tmp / "small"
    mount.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def test_a_job_on_a_full_disk_fails_clearly_and_the_next_one_runs_once_there_is_room(
        alice, settings, small_disk, docker_client):
    settings.JOB_WORK_ROOT = small_disk / "jobs"
    settings.JOB_ENGINE_WAIT_SECONDS = 0
    settings.JOB_DISK_WAIT_SECONDS = 0
    first = make_job(alice, "def handler(event, context):\n    return 1\n")
    run_job(first.pk)  # makes the work root, then leaves room for the filler only
    assert Job.objects.get(pk=first.pk).status == "succeeded"

    filler = _fill(small_disk)
    starved = make_job(alice, "def handler(event, context):\n    return 2\n", {"pad": "x" * 4096})
    run_job(starved.pk)
    starved.refresh_from_db()
    assert (starved.status, starved.error_code) == ("failed", "work_disk_full")
    assert str(small_disk) not in starved.error_message
    assert not LLMCall.objects.filter(job=starved).exists()
    assert not (settings.JOB_WORK_ROOT / str(starved.pk)).exists()

    filler.unlink()
    after = make_job(alice, "def handler(event, context):\n    return 3\n")
    run_job(after.pk)
    after.refresh_from_db()
    assert (after.status, after.result) == ("succeeded", 3)


@pytest.mark.django_db(transaction=True)  # the runner's thread must see the job
def test_a_job_on_a_full_disk_waits_for_room_and_then_runs(alice, settings, small_disk, docker_client):
    settings.JOB_WORK_ROOT = small_disk / "jobs"
    settings.JOB_DISK_WAIT_SECONDS = 30
    run_job(make_job(alice, "def handler(event, context):\n    return 1\n").pk)  # makes the work root
    filler = _fill(small_disk)
    starved = make_job(alice, "def handler(event, context):\n    return 2\n", {"pad": "x" * 4096})
    runner = threading.Thread(target=run_job, args=(starved.pk,))
    runner.start()
    time.sleep(2)
    assert Job.objects.get(pk=starved.pk).status == "running"
    filler.unlink()
    runner.join(60)
    starved.refresh_from_db()
    assert (starved.status, starved.result) == ("succeeded", 2), starved.error_message
