"""Use cases of schedules, and the scheduler's tick (`fire_due`, run by beat every SCHEDULE_POLL_SECONDS).

A tick fires once: the scheduler claims it with a conditional UPDATE of the schedule's `next_run_at` (from the tick
to the next one), and records it as a `ScheduleTick`, unique per (schedule, tick), in the same transaction as the
job it submits. Two schedulers running by mistake race on the UPDATE; one wins, the other finds nothing to do.

Missed ticks (the scheduler or the database was down) are not run in a burst: a schedule runs once, for the first
tick it missed within the last SCHEDULE_CATCH_UP_SECONDS, or, when all it missed is older, not at all (the tick is
recorded as `missed`); either way its next run is its first tick after now. Paused time is not caught up.
"""
import json
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import DomainError, NotFound
from jobs.models import TERMINAL, Function, Job
from jobs.services import submit_job

from .cron import Cron, CronError
from .models import Overlap, Schedule, ScheduleTick, TickOutcome

logger = logging.getLogger(__name__)

ONE_TICK = timedelta(microseconds=1)
DUE_BATCH = 200


# --- schedules --------------------------------------------------------------------------------------------------

def create_schedule(*, owner: User, function: Function, name: str, cron: str = "",
                    interval_seconds: int | None = None, input_data: Any = None, model_id: str = "",
                    token_budget: int | None = None, overlap: str = Overlap.SKIP, paused: bool = False) -> Schedule:
    """A schedule of `function` (the owner's, already looked up). Raises DomainError `invalid_schedule` (both or
    neither of cron and interval, an interval under SCHEDULE_MIN_INTERVAL_SECONDS), `invalid_cron`, and
    `input_too_large`; the run's own checks (model, budget) are made at each tick, by the admission."""
    schedule = Schedule(owner=owner, function=function, name=name, cron=cron.strip(), paused=paused,
                        interval_seconds=interval_seconds, input_data=input_data, model_id=model_id or "",
                        token_budget=token_budget, overlap=overlap, anchor=timezone.now())
    _check(schedule)
    schedule.next_run_at = next_tick(schedule, schedule.anchor)
    schedule.save()
    return schedule


def update_schedule(*, schedule: Schedule, **changes: Any) -> Schedule:
    """Change `schedule`'s fields; a new cron or interval starts from now. Raises as create_schedule does."""
    for name, value in changes.items():
        setattr(schedule, name, value)
    _check(schedule)
    if {"cron", "interval_seconds"} & changes.keys():
        schedule.anchor = timezone.now()
        schedule.next_run_at = next_tick(schedule, schedule.anchor)
    schedule.save()
    return schedule


def pause(*, schedule: Schedule) -> Schedule:
    Schedule.objects.filter(pk=schedule.pk).update(paused=True, updated_at=timezone.now())
    schedule.refresh_from_db()
    return schedule


def resume(*, schedule: Schedule) -> Schedule:
    """Run again from the first tick after now: what the pause skipped is not caught up."""
    Schedule.objects.filter(pk=schedule.pk).update(paused=False, next_run_at=next_tick(schedule, timezone.now()),
                                                   updated_at=timezone.now())
    schedule.refresh_from_db()
    return schedule


def get_schedule(*, owner: User, schedule_id: Any) -> Schedule:
    schedule = Schedule.objects.filter(owner=owner).filter(pk=schedule_id).first() if _is_uuid(schedule_id) else None
    if schedule is None:
        raise NotFound(f"Schedule {schedule_id} not found.", code="schedule_not_found")
    return schedule


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def _check(schedule: Schedule) -> None:
    if bool(schedule.cron) == (schedule.interval_seconds is not None):
        raise DomainError("Give a schedule either a cron expression or an interval.", code="invalid_schedule")
    if schedule.interval_seconds is not None and schedule.interval_seconds < settings.SCHEDULE_MIN_INTERVAL_SECONDS:
        raise DomainError(f"The interval must be at least {settings.SCHEDULE_MIN_INTERVAL_SECONDS} s.",
                          code="invalid_schedule")
    if schedule.cron:
        try:
            Cron(schedule.cron).next_after(timezone.now())
        except CronError as exc:
            raise DomainError(str(exc), code="invalid_cron") from None
    if len(json.dumps(schedule.input_data).encode()) > settings.JOB_INPUT_MAX_BYTES:
        raise DomainError("inputData is too large.", code="input_too_large", status=413)


def next_tick(schedule: Schedule, after: datetime) -> datetime:
    """`schedule`'s first tick strictly after `after`."""
    if schedule.cron:
        return Cron(schedule.cron).next_after(after)
    interval = timedelta(seconds=schedule.interval_seconds)
    return schedule.anchor + ((after - schedule.anchor) // interval + 1) * interval


# --- the scheduler's tick ---------------------------------------------------------------------------------------

def fire_due(*, now: datetime | None = None) -> int:
    """Start the runs that waited for their previous run to end, then fire every schedule whose tick has come;
    returns how many ticks this call recorded."""
    now = now or timezone.now()
    started = sum(_start_waiting(tick) for tick in ScheduleTick.objects.filter(
        outcome=TickOutcome.WAITING, schedule__paused=False).select_related("schedule__function", "schedule__owner"))
    due = (Schedule.objects.filter(paused=False, next_run_at__lte=now).select_related("function", "owner")
           .order_by("next_run_at")[:DUE_BATCH])
    return started + sum(_fire(schedule, now) for schedule in due)


def _fire(schedule: Schedule, now: datetime) -> bool:
    """Claim `schedule`'s due tick and act on it; False when another scheduler claimed it first."""
    tick = schedule.next_run_at
    window = now - timedelta(seconds=settings.SCHEDULE_CATCH_UP_SECONDS)
    run_at = tick if tick >= window else next_tick(schedule, window - ONE_TICK)
    with transaction.atomic():
        if not Schedule.objects.filter(pk=schedule.pk, paused=False, next_run_at=tick).update(
                next_run_at=next_tick(schedule, now)):
            return False
        if run_at > now:
            logger.warning("schedule %s: ticks from %s missed (scheduler down); not run", schedule.pk, tick)
            return _record(schedule, tick, TickOutcome.MISSED) is not None
        row = _record(schedule, run_at, TickOutcome.SUBMITTED)
        if row is None:
            return False
        if not _previous_ended(schedule):
            waiting = ScheduleTick.objects.filter(schedule=schedule, outcome=TickOutcome.WAITING).exists()
            row.outcome = TickOutcome.WAITING if schedule.overlap == Overlap.QUEUE and not waiting else \
                TickOutcome.SKIPPED
            row.save(update_fields=["outcome"])
            return True
        _submit(schedule, row)
    return True


def _start_waiting(row: ScheduleTick) -> bool:
    """Submit the run of waiting tick `row` if its schedule's previous run has ended (once: a conditional UPDATE)."""
    if not _previous_ended(row.schedule):
        return False
    with transaction.atomic():
        if not ScheduleTick.objects.filter(pk=row.pk, outcome=TickOutcome.WAITING).update(
                outcome=TickOutcome.SUBMITTED):
            return False
        _submit(row.schedule, row)
    return True


def _record(schedule: Schedule, tick: datetime, outcome: str) -> ScheduleTick | None:
    """The tick's row; None when it exists already (the unique constraint: it was fired)."""
    try:
        with transaction.atomic():
            return ScheduleTick.objects.create(schedule=schedule, tick=tick, outcome=outcome)
    except IntegrityError:
        logger.warning("schedule %s: tick %s was already fired", schedule.pk, tick)
        return None


def _previous_ended(schedule: Schedule) -> bool:
    if schedule.last_job_id is None:
        return True
    status = Job.objects.filter(pk=schedule.last_job_id).values_list("status", flat=True).first()
    return status is None or status in TERMINAL


def _submit(schedule: Schedule, row: ScheduleTick) -> None:
    """Admit the tick's job as any run is admitted; a refused one is recorded as the tick's failure."""
    try:
        with transaction.atomic():
            if schedule.function.deleted_at is not None:
                raise NotFound("The schedule's function was deleted.", code="function_not_found")
            job = submit_job(owner=schedule.owner, function=schedule.function, model_id=schedule.model_id or None,
                             input_data=schedule.input_data, token_budget=schedule.token_budget)
    except DomainError as exc:
        logger.warning("schedule %s: the run of tick %s was refused: %s", schedule.pk, row.tick, exc.code)
        ScheduleTick.objects.filter(pk=row.pk).update(outcome=TickOutcome.FAILED, error_code=exc.code)
        return
    ScheduleTick.objects.filter(pk=row.pk).update(outcome=TickOutcome.SUBMITTED, job=job)
    Schedule.objects.filter(pk=schedule.pk).update(last_job=job)
    logger.info("schedule %s: tick %s runs as job %s", schedule.pk, row.tick, job.pk)


def prune_ticks() -> int:
    """Remove the ticks older than OUTBOUND_KEEP_SECONDS, but never a schedule's waiting one; returns how many."""
    old = timezone.now() - timedelta(seconds=settings.OUTBOUND_KEEP_SECONDS)
    return ScheduleTick.objects.filter(tick__lt=old).exclude(outcome=TickOutcome.WAITING).delete()[0]
