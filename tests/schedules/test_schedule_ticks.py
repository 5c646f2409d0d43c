"""The scheduler's tick (schedules.services.fire_due) on a clock the test sets: how often a schedule runs, pause and
resume, overlaps, missed ticks, and two schedulers at once. Each run is a real admission (jobs.services.submit_job);
a run is ended by cancelling its job, as its owner could."""
import threading
from datetime import timedelta

import pytest
from django.db.models import F
from django.utils import timezone

from jobs.models import Job
from jobs.services import cancel_job, deploy_function
from schedules import services
from schedules.models import Schedule, ScheduleTick
from tests.support.threads import run_in_threads

CODE = b"def handler(event, context):\n    return event\n"


@pytest.fixture
def function(alice, served_models):
    return deploy_function(owner=alice.user, name="tick", code=CODE)


def _every(alice, function, seconds=10, **fields):
    return services.create_schedule(owner=alice.user, function=function, name="s", interval_seconds=seconds,
                                    input_data={"x": 1}, **fields)


def _run_for(schedule, seconds: int, *, end_runs: bool = True) -> None:
    """Fire every second of `seconds` from the schedule's creation, ending each run at once when `end_runs`."""
    start = schedule.anchor
    for second in range(seconds):
        services.fire_due(now=start + timedelta(seconds=second, milliseconds=500))
        if end_runs:
            for job in Job.objects.filter(status="queued"):
                cancel_job(job=job)


def _outcomes(schedule):
    return list(ScheduleTick.objects.filter(schedule=schedule).order_by("tick").values_list("outcome", flat=True))


@pytest.mark.django_db
def test_a_schedule_every_ten_seconds_runs_six_times_a_minute(alice, function):
    schedule = _every(alice, function)
    _run_for(schedule, 60)
    assert _outcomes(schedule) == ["submitted"] * 5  # ticks at 10, 20, ..., 50 s; the sixth is at 60 s
    services.fire_due(now=schedule.anchor + timedelta(seconds=60))
    assert Job.objects.count() == 6
    job = Job.objects.first()
    assert (job.owner, job.input_data, job.function_id) == (alice.user, {"x": 1}, function.pk)


@pytest.mark.django_db
def test_a_paused_schedule_does_not_run_and_resumes_from_the_next_tick(alice, function):
    schedule = _every(alice, function)
    services.pause(schedule=schedule)
    _run_for(schedule, 45)
    assert Job.objects.count() == 0
    services.resume(schedule=schedule)
    schedule.refresh_from_db()
    assert schedule.next_run_at > timezone.now()
    services.fire_due(now=schedule.next_run_at)
    assert Job.objects.count() == 1


@pytest.mark.django_db
def test_an_overlapping_tick_is_skipped_by_default(alice, function):
    schedule = _every(alice, function)
    _run_for(schedule, 35, end_runs=False)  # the first run never ends
    assert _outcomes(schedule) == ["submitted", "skipped", "skipped"]


@pytest.mark.django_db
def test_an_overlapping_tick_waits_when_the_owner_queues_and_one_waits_at_most(alice, function):
    schedule = _every(alice, function, overlap="queue")
    _run_for(schedule, 35, end_runs=False)
    assert _outcomes(schedule) == ["submitted", "waiting", "skipped"]
    cancel_job(job=Job.objects.get())
    services.fire_due(now=schedule.anchor + timedelta(seconds=36))
    assert _outcomes(schedule) == ["submitted", "submitted", "skipped"] and Job.objects.count() == 2


@pytest.mark.django_db
def test_missed_ticks_are_not_run_in_a_burst(alice, function, settings):
    settings.SCHEDULE_CATCH_UP_SECONDS = 60
    schedule = _every(alice, function)
    services.fire_due(now=schedule.anchor + timedelta(hours=3))  # back after a three-hour outage
    assert _outcomes(schedule) == ["submitted"] and Job.objects.count() == 1
    hourly = services.create_schedule(owner=alice.user, function=function, name="h", cron="0 * * * *")
    services.fire_due(now=hourly.next_run_at + timedelta(minutes=30))
    assert _outcomes(hourly) == ["missed"]
    hourly.refresh_from_db()
    assert hourly.next_run_at > timezone.now()


@pytest.mark.django_db
def test_a_refused_run_is_recorded_and_the_schedule_goes_on(alice, function):
    schedule = _every(alice, function, model_id="no-such-model")
    _run_for(schedule, 25)
    assert list(ScheduleTick.objects.values_list("outcome", "error_code")) == [("failed", "unknown_model")] * 2


@pytest.mark.django_db
def test_old_ticks_are_pruned_but_a_waiting_one_stays(alice, function, settings):
    schedule = _every(alice, function, overlap="queue")
    _run_for(schedule, 35, end_runs=False)
    ScheduleTick.objects.update(tick=F("tick") - timedelta(seconds=settings.OUTBOUND_KEEP_SECONDS + 60))
    assert services.prune_ticks() == 2
    assert _outcomes(schedule) == ["waiting"]


@pytest.mark.django_db(transaction=True)
def test_two_schedulers_at_once_never_fire_a_tick_twice(alice, function):
    schedules = [_every(alice, function, seconds=10) for _ in range(5)]
    start = min(s.anchor for s in schedules)
    steps = [start + timedelta(seconds=second) for second in range(0, 64, 2)]
    barrier = threading.Barrier(2)

    def scheduler() -> None:
        for now in steps:
            barrier.wait(timeout=30)  # both look at the same moment
            services.fire_due(now=now)
            barrier.wait(timeout=30)
            Job.objects.filter(status="queued").update(status="cancelled")

    assert run_in_threads(scheduler, [(), ()]) == []
    for schedule in Schedule.objects.all():
        ticks = list(ScheduleTick.objects.filter(schedule=schedule).values_list("tick", flat=True))
        assert len(ticks) == len(set(ticks)) == 6
    assert Job.objects.count() == 30
