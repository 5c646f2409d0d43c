"""Hands a job to the broker: the one place where services reach Celery, so they can be used (and tested) with no
broker in sight and the task's signature is named once.

JOB_DISPATCH picks how an admitted job gets there: `direct`, the web process publishes it once its row commits;
`outbox`, the admission only wakes the relays, which send it from the workers (jobs/outbox.py).
"""
import logging
import uuid
from datetime import datetime

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing import job_money

from . import events, relay_bell
from .endings import end_job
from .models import Job, JobStatus

logger = logging.getLogger(__name__)

# The worker's tasks (jobs.tasks), sent by name: the web process imports nothing of the worker.
RUN_JOB_TASK = "jobs.run_job"
BUILD_LAYER_TASK = "jobs.build_layer"


def enqueue_job(job_id: uuid.UUID, queue: str) -> None:
    current_app.send_task(RUN_JOB_TASK, args=[str(job_id)], queue=queue, routing_key=queue)


def enqueue_layer_build(layer_id: int) -> None:
    """Ask a worker of DEPENDENCY_BUILD_QUEUE to build dependency layer `layer_id` (jobs.dependencies). A message
    the broker refuses is only logged: the layers' sweep asks again for a build that nobody started."""
    queue = settings.DEPENDENCY_BUILD_QUEUE
    try:
        current_app.send_task(BUILD_LAYER_TASK, args=[layer_id], queue=queue, routing_key=queue)
    except Exception as exc:  # the broker's client raises many types
        logger.error("layer %s: could not ask for its build: %s", layer_id, exc)


def dispatched_on_admission() -> datetime | None:
    """A new job's `dispatched_at`: now in direct mode, where the web process sends it itself (so that no relay
    ever sends it too), None with the outbox, where a relay will."""
    return None if settings.JOB_DISPATCH == "outbox" else timezone.now()


def hand_over(job: Job) -> None:
    """Send `job`, whose row the current transaction writes, to the broker once it commits: by publishing it then
    (direct) or by waking the relays with a NOTIFY, which PostgreSQL delivers with the commit and drops with a
    rollback (outbox)."""
    if settings.JOB_DISPATCH == "outbox":
        relay_bell.ring()
    else:
        transaction.on_commit(lambda: _publish(job))


def _publish(job: Job) -> None:
    try:
        enqueue_job(job.pk, job.queue)
    except Exception as exc:  # the broker's client raises many types; each must fail the job visibly
        fail_unqueued(job.pk, exc)


def fail_unqueued(job_id: uuid.UUID, exc: Exception) -> None:
    """Fail queued job `job_id` with `queue_unavailable`: the broker refused it (`exc`), and it will not be run."""
    logger.error("job %s: could not enqueue: %s", job_id, exc)
    if end_job(job_id, JobStatus.FAILED, error_code="queue_unavailable",
               error_message="The job queue is unavailable; the job was not run.", finished_at=timezone.now()):
        job_money.release(job_id=job_id)
        events.record_end(Job.objects.select_related("function_version").get(pk=job_id))
