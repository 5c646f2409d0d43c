"""Runs one job: claim, prepare, run, collect, finalize, and always clean up. Orchestration only: the container
is the sandbox's (jobs.sandbox), the model calls the gateway's (jobs.metering), the money billing's.

A job runs on a warm container of its resource profile when the worker's pool has one ready (`sandbox.warm_pool`),
else on a cold one created for it; both are hardened alike, serve that one job, and report the same events and
metrics.

Redelivery safety: the claim is a conditional UPDATE (queued -> running), so a message delivered twice starts
at most one container. A delivery that finds its job still `running` long past its timeout means the worker
that held it died: the job is failed as `worker_lost` (sandbox.recovery).

Money: the job's hold on its owner's quota is released only in `finally`, once the gateway is stopped and its calls
are on the ledger, whatever ended the job (a cancel while it ran included).
"""
import logging
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

from django.conf import settings
from django.db import connection
from django.db.models import F
from django.utils import timezone

from billing import job_money
from core import metrics
from core.backoff import Backoff
from core.database import DATABASE_DOWN, outlasting_outages
from core.errors import DomainError

from . import collect, events, results
from .endings import check_thresholds, end_job
from .exits import interpret_exit
from .metering.gateway import JobGateway
from .metering.ledger import ledger_totals
from .metering.receipts import close_chain
from .metering.routing import gateway_config
from .models import Job, JobStatus
from .sandbox import warm_pool
from .sandbox.docker_backend import (ContainerError, ContainerGone, ContainerNotStarted, ContainerOutcome,
                                     ContainerSpec, DockerBackend)
from .sandbox.engine import shared_backend
from .sandbox.layers import local_layer
from .sandbox.recovery import handle_unclaimed
from .sandbox.result_channel import ResultReport
from .sandbox.spec import container_spec, fill_workdir, folders_at, job_profile, prepare_workdir
from .sandbox.warm_pool import Slot, SlotUnavailable, WarmPool
from .sandbox.workdir import WorkdirError, share_socket

logger = logging.getLogger(__name__)

T = TypeVar("T")

CANCEL_CHECK_SECONDS = 0.5
# The pauses between tries of an engine or a disk that failed before the script could run.
ENGINE_RETRY_FIRST_PAUSE = 0.5
ENGINE_RETRY_MAX_PAUSE = 5.0


def run_job(job_id: str | uuid.UUID, *, backend: DockerBackend | None = None) -> None:
    # Nothing has run yet: a database that is down is waited for (the message stays ours meanwhile).
    job = _outlasting_outages(lambda: _claim(job_id), f"job {job_id}: its claim")
    if job is None:
        handle_unclaimed(job_id)
        return
    logger.info("job %s: claimed by %s", job.id, settings.WORKER_ID)
    metrics.job_claimed(queue_wait_seconds=(job.started_at - job.created_at).total_seconds())
    backend = backend or shared_backend()
    metrics.JOBS_RUNNING.inc()  # and dec() in finally
    # The job's live events: buffered here, written by the writer's own thread (never on the script's path).
    live = events.writer_for(job.id)
    live.emit(*events.status_event(job))
    try:
        with ExitStack() as cleanup:
            try:
                outcome, gateway = _execute_when_disk_allows(job, backend, live, cleanup)
                # Model calls may outlive the container: stopping the gateway drops the requests not yet forwarded,
                # cancels the calls in flight and waits (a few seconds) until they are on the ledger, so that the
                # ledger is complete before the job's totals are taken from it.
                gateway.stop()
                # The script has run: its outcome waits for a database that is down, rather than be lost.
                _outlasting_outages(lambda: _finalize(job, outcome, gateway.report), f"job {job.id}: its end")
            except (ContainerError, WorkdirError, DomainError) as exc:
                logger.error("job %s: executor failed: %s", job.id, exc)
                _fail(job, exc.code, str(exc))
            except Exception:
                logger.exception("job %s: internal error", job.id)
                # The exception's text (SQL, host paths) is the operator's, in the log; not the tenant's.
                _fail(job, "internal_error", "The worker failed while running the job.")
    finally:
        # The gateway is stopped (the ExitStack closed): nothing of this job can still spend, and its chain of
        # receipts is closed by its job receipt.
        _outlasting_outages(lambda: job_money.release(job_id=job.pk), f"job {job.id}: its hold")
        _close_receipts(job)
        check_thresholds(job)
        _outlasting_outages(job.refresh_from_db, f"job {job.id}: its end")
        for event in events.end_events(job):
            live.emit(*event)
        live.close()
        results.publish(job)
        metrics.JOBS_RUNNING.dec()
        metrics.job_finished(status=job.status, error_code=job.error_code, run_seconds=_run_seconds(job))
        logger.info("job %s: %s (%s)", job.id, job.status, job.error_code or "ok")


def _claim(job_id: str | uuid.UUID) -> Job | None:
    """Count the delivery and move the job from queued to running; the job, or None when it was not queued."""
    Job.objects.filter(pk=job_id).update(deliveries=F("deliveries") + 1)
    if not Job.objects.move(job_id, JobStatus.RUNNING, started_at=timezone.now(), worker_id=settings.WORKER_ID):
        return None
    return Job.objects.select_related("function_version").get(pk=job_id)


def _start_backoff(seconds: float) -> Backoff:
    """The pauses of a job waiting for an engine or a disk that failed before its script could run."""
    return Backoff(seconds, first=ENGINE_RETRY_FIRST_PAUSE, most=ENGINE_RETRY_MAX_PAUSE)


def _outlasting_outages(action: Callable[[], T], what: str) -> T:
    return outlasting_outages(action, what=what, seconds=settings.JOB_DATABASE_WAIT_SECONDS)


def _execute_when_disk_allows(job: Job, backend: DockerBackend, live: events.EventWriter,
                              cleanup: ExitStack) -> tuple[ContainerOutcome, JobGateway]:
    """`_execute`, tried again with growing pauses for at most JOB_DISK_WAIT_SECONDS while the work root is too full
    for the job's files: nothing of the script has run then (its files come before its container), so it runs
    once there is room; past the wait it fails with `work_disk_full`."""
    backoff = _start_backoff(settings.JOB_DISK_WAIT_SECONDS)
    while True:
        with ExitStack() as attempt:
            try:
                ran = _execute(job, backend, live, attempt)
            except WorkdirError as exc:
                if exc.code != "work_disk_full" or not backoff.allows() or _is_cancelled(job.pk):
                    raise
                logger.warning("job %s: no disk space for its files; trying again in %.1f s", job.id, backoff.pause)
            else:
                cleanup.push(attempt.pop_all())
                return ran
        backoff.wait()


def _execute(job: Job, backend: DockerBackend, live: events.EventWriter,
             cleanup: ExitStack) -> tuple[ContainerOutcome, JobGateway]:
    """Run the job on a warm container of its profile if the pool has one ready, else on a cold one. What must be
    undone afterwards (the gateway, the container, the folder) is pushed on `cleanup`."""
    # A job with dependencies never runs without its layer: local_layer raises when it is not ready.
    profile = job_profile(job, local_layer(job.function_version))
    pool = warm_pool.current()
    slot = pool.take(profile, owner=job.owner_id) if pool is not None else None
    if slot is not None:
        ran = _run_warm(job, backend, live, pool, slot, cleanup)
        if ran is not None:
            return ran
    folders = prepare_workdir(job, cleanup)
    gateway = _start_gateway(job, folders.run, live, cleanup)
    return _run_cold(job, backend, live, container_spec(job, folders, profile)), gateway


def _run_cold(job: Job, backend: DockerBackend, live: events.EventWriter, spec: ContainerSpec) -> ContainerOutcome:
    """Run the job in a container created for it. An engine that fails before the script could run (it is
    restarting, say) is waited for, with growing pauses, for at most JOB_ENGINE_WAIT_SECONDS: the job then runs once
    it answers. A failure after the script may have run is not retried (the script may have spent tokens)."""
    backoff = _start_backoff(settings.JOB_ENGINE_WAIT_SECONDS)
    while True:
        try:
            return backend.run(spec, should_cancel=_cancel_checker(job.id), before_start=_container_recorder(job.id),
                               on_started=_started_recorder(time.monotonic()), on_output=live.output)
        except ContainerNotStarted as exc:
            if exc.code != "executor_unavailable" or not backoff.allows() or _is_cancelled(job.pk):
                raise
            logger.warning("job %s: the engine failed before the script ran (%s); trying again in %.1f s",
                           job.id, exc, backoff.pause)
            backoff.wait()
            try:  # a container the failed attempt created and could not remove would hold the job's name
                backend.remove_job_containers(str(job.pk))
            except ContainerError:
                pass


def _run_warm(job: Job, backend: DockerBackend, live: events.EventWriter, pool: WarmPool, slot: Slot,
              cleanup: ExitStack) -> tuple[ContainerOutcome, JobGateway] | None:
    """Run the job in `slot`; None when its container turned out not to be waiting (the job did not start)."""
    asked_at = time.monotonic()
    with ExitStack() as attempt:
        attempt.callback(pool.release, slot)
        folders = folders_at(slot.path)
        fill_workdir(job, folders)
        gateway = _start_gateway(job, folders.run, live, attempt)
        spec = container_spec(job, folders, slot.profile)

        def begin() -> None:
            _container_recorder(job.id)(slot.container_id)
            slot.begin(spec.env, is_running=lambda: backend.is_running(slot.container_id))

        try:
            outcome = backend.supervise(
                slot.container_id, spec, should_cancel=_cancel_checker(job.id),
                on_started=_started_recorder(asked_at), on_output=live.output, begin=begin,
            )
        except (SlotUnavailable, ContainerGone) as exc:
            logger.warning("job %s: warm container %s unusable (%s); cold path", job.id, slot.container_id[:12], exc)
            return None
        slot.finished = True
        logger.info("job %s: ran on warm container %s", job.id, slot.container_id[:12])
        cleanup.push(attempt.pop_all())
        return outcome, gateway


def _start_gateway(job: Job, run_dir: Path, live: events.EventWriter, cleanup: ExitStack) -> JobGateway:
    gateway = JobGateway(gateway_config(job, on_event=live.emit), socket_dir=str(run_dir)).start()
    cleanup.callback(gateway.stop)
    share_socket(Path(gateway.socket_path))
    live.emit("usage", gateway.meter.snapshot())
    return gateway


def _container_recorder(job_id: uuid.UUID):
    """Records the job's container on its row just before the script is given it: a job whose row names no container
    never ran a line of its script, which is what lost-job recovery needs to know (sandbox.recovery)."""
    def record(container_id: str) -> None:
        _outlasting_outages(lambda: Job.objects.filter(pk=job_id).update(container_id=container_id),
                            f"job {job_id}: its container")

    return record


def _started_recorder(asked_at: float):
    def on_started(container_id: str) -> None:
        metrics.container_started(seconds=time.monotonic() - asked_at)

    return on_started


def _run_seconds(job: Job) -> float | None:
    if job.started_at is None or job.finished_at is None:
        return None
    return (job.finished_at - job.started_at).total_seconds()


def _cancel_checker(job_id: uuid.UUID):
    last_check = 0.0

    def should_cancel() -> bool:
        nonlocal last_check
        if time.monotonic() - last_check < CANCEL_CHECK_SECONDS:
            return False
        last_check = time.monotonic()
        try:
            return _is_cancelled(job_id)
        except DATABASE_DOWN:  # a cancel cannot have been written either: the script runs on
            connection.close()
            return False

    return should_cancel


def _is_cancelled(job_id: uuid.UUID) -> bool:
    return Job.objects.filter(pk=job_id, status=JobStatus.CANCELLED).exists()


def _finalize(job: Job, outcome: ContainerOutcome, report: ResultReport) -> None:
    verdict = interpret_exit(
        exit_code=outcome.exit_code, oom_killed=outcome.oom_killed, timed_out=outcome.timed_out,
        cancelled=outcome.cancelled, timeout_seconds=job.timeout_seconds, memory_mb=job.memory_mb,
        script_error=collect.script_error(report.error),
    )
    status, error_code, message = verdict.status, verdict.error_code, verdict.message
    if status == JobStatus.SUCCEEDED and report.rejected_code:
        status, error_code = JobStatus.FAILED, report.rejected_code
        message = f"The result is larger than {settings.JOB_RESULT_MAX_BYTES} bytes."
    fields: dict[str, Any] = {
        "exit_code": outcome.exit_code,
        "stdout": collect.output_text(outcome.stdout),
        "stderr": collect.output_text(outcome.stderr),
        "stdout_truncated": outcome.stdout_truncated,
        "stderr_truncated": outcome.stderr_truncated,
        "result": collect.clean_json(report.result) if status == JobStatus.SUCCEEDED else None,
        "duration_ms": outcome.duration_ms,
        "peak_memory_bytes": collect.peak_memory(outcome, report, job.memory_mb * 1024 * 1024),
        "container_id": outcome.container_id,
        "finished_at": timezone.now(),
        # The ledger is the truth; the running totals kept during the job must agree with it.
        **ledger_totals(str(job.pk)),
    }
    if not end_job(job.pk, status, error_code=error_code, error_message=message, **fields):
        # Cancelled by a user while it ran: the status stays, the output is still kept for them to read.
        fields.pop("finished_at")
        Job.objects.filter(pk=job.pk).update(**fields)


def _close_receipts(job: Job) -> None:
    try:
        _outlasting_outages(lambda: close_chain(job), f"job {job.id}: its job receipt")
    except Exception:  # the job's result must still be published; verify_ledger names the chain left open
        logger.exception("job %s: could not write its job receipt", job.pk)


def _fail(job: Job, error_code: str, message: str) -> None:
    _outlasting_outages(lambda: end_job(job.pk, JobStatus.FAILED, error_code=error_code, error_message=message,
                                        finished_at=timezone.now()),
                        f"job {job.id}: its end")
