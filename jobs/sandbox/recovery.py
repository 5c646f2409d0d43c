"""Jobs whose worker was lost: a job still `running` long past its timeout. One whose row names no container never
ran a line of its script (the runner records the container just before it starts it): it is queued again and sent,
and its claim keeps it from running twice. Any other is failed as `worker_lost` (it is not run again, since its
script may already have spent tokens), its containers removed, its hold released and its end published."""
import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing import job_money
from core import metrics

from .. import events, results
from ..dispatch import dispatched_on_admission, hand_over
from ..endings import end_job
from ..metering.receipts import close_chain
from ..models import Job, JobStatus
from .docker_backend import ContainerError, DockerBackend
from .engine import new_backend

logger = logging.getLogger(__name__)


def handle_unclaimed(job_id: str | uuid.UUID) -> None:
    """A delivery found its job not queued: dropped, unless the job is lost (then it is failed, see `declare_lost`)."""
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        logger.warning("job %s: delivered but does not exist; dropped", job_id)
    elif is_lost(job):
        declare_lost(job, backend=None)
    else:
        logger.info("job %s: delivered again while %s; not run twice", job.id, job.status)


def recover_lost_jobs(*, backend: DockerBackend | None = None) -> int:
    """Fail the jobs whose worker vanished (still `running` long past their timeout) and remove their containers.

    Runs when a worker starts and periodically: a broker that does not redeliver (the filesystem transport) would
    otherwise leave such a job `running` forever. Returns how many jobs it failed.
    """
    running = Job.objects.filter(status=JobStatus.RUNNING, started_at__lt=timezone.now() - _lost_grace())
    lost = [job for job in running.only("id", "status", "started_at", "timeout_seconds") if is_lost(job)]
    for job in lost:
        declare_lost(job, backend=backend)
    return len(lost)


def _queue_again(job: Job) -> bool:
    """Queue `job` again and send it, if its row still names no container (in the same UPDATE); True if it did."""
    with transaction.atomic():
        if not Job.objects.filter(container_id="").move(job.pk, JobStatus.QUEUED, started_at=None, worker_id="",
                                                        dispatched_at=dispatched_on_admission()):
            return False
        queued = Job.objects.get(pk=job.pk)
        hand_over(queued)
    logger.warning("job %s: its worker was lost before it started a container; queued again", job.pk)
    return True


def _lost_grace() -> timedelta:
    return timedelta(seconds=settings.JOB_LOST_GRACE_SECONDS)


def is_lost(job: Job) -> bool:
    if job.status != JobStatus.RUNNING or job.started_at is None:
        return False
    return timezone.now() > job.started_at + timedelta(seconds=job.timeout_seconds) + _lost_grace()


def declare_lost(job: Job, *, backend: DockerBackend | None) -> None:
    if _queue_again(job):
        return
    if not end_job(job.pk, JobStatus.FAILED, error_code="worker_lost", finished_at=timezone.now(),
                   error_message="The worker running this job stopped before it finished."):
        return
    logger.warning("job %s: its worker was lost; failed", job.pk)
    metrics.job_finished(status=JobStatus.FAILED, error_code="worker_lost", run_seconds=None)
    backend = backend or new_backend()
    try:
        backend.remove_job_containers(str(job.pk))
        # A warm container was made before its job existed and carries no job label: it is found by its id.
        container_id = Job.objects.filter(pk=job.pk).values_list("container_id", flat=True).first()
        if container_id:
            backend.remove_container(container_id)
    except ContainerError as exc:
        logger.warning("job %s: could not remove its container: %s", job.pk, exc)
    # Its containers are gone: no call of its gateway can still reach the ledger, so what it held is settled now.
    job_money.release(job_id=job.pk)
    lost = Job.objects.select_related("function_version").get(pk=job.pk)
    close_chain(lost)
    lost.refresh_from_db(fields=["receipt_hash"])
    events.record_end(lost)
    results.publish(lost)
