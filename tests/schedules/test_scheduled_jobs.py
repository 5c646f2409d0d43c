"""Scheduled runs are ordinary jobs: a real worker runs them in Docker, and their owner sees and could cancel them.
The scheduler is called on the real clock, as beat calls it, by two threads at once."""
import time

import pytest

from jobs.models import Job
from jobs.services import get_function
from schedules import services
from schedules.models import ScheduleTick
from tests.support.jobs import deploy
from tests.support.threads import run_in_threads
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("served_models")]


def test_a_schedule_runs_real_jobs_on_the_real_clock(_isolated_broker, worker, alice, settings):
    settings.SCHEDULE_MIN_INTERVAL_SECONDS = 1
    worker(_isolated_broker)
    deployed = deploy(alice, "def handler(event, context):\n    return {'got': event}\n")
    function = get_function(owner=alice.user, function_id=deployed["functionId"])
    schedule = services.create_schedule(owner=alice.user, function=function,
                                        name="fast", interval_seconds=2, input_data={"k": "v"})
    stop = time.monotonic() + 9

    def beat() -> None:
        while time.monotonic() < stop:
            services.fire_due()
            time.sleep(0.25)

    assert run_in_threads(beat, [(), ()]) == []
    ticks = list(ScheduleTick.objects.filter(schedule=schedule).values_list("tick", "outcome"))
    assert len(ticks) == len({tick for tick, _ in ticks}) and 3 <= len(ticks) <= 5
    submitted = list(Job.objects.filter(owner=alice.user))
    wait_for(lambda: all(j.status == "succeeded" for j in Job.objects.filter(owner=alice.user)), timeout=60,
             message="the scheduled jobs to succeed")
    assert all(job.input_data == {"k": "v"} for job in submitted)
    listed = alice.client.get("/api/v1/jobs/").json()["results"]
    assert {j["jobId"] for j in listed} == {str(j.pk) for j in submitted}
