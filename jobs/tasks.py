from celery import shared_task
from celery.signals import worker_ready

from .events import prune_events
from .idempotency import purge_expired_keys
from .runner import recover_lost_jobs, run_job


@shared_task(name="jobs.run_job", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job_task(job_id: str) -> None:
    run_job(job_id)


@shared_task(name="jobs.recover_lost_jobs", ignore_result=True)
def recover_lost_jobs_task() -> None:
    recover_lost_jobs()


@shared_task(name="jobs.purge_idempotency_keys", ignore_result=True)
def purge_idempotency_keys_task() -> None:
    purge_expired_keys()


@worker_ready.connect
def _recover_on_start(**kwargs: object) -> None:
    recover_lost_jobs()


@shared_task(name="jobs.prune_job_events", ignore_result=True)
def prune_job_events_task() -> None:
    prune_events()
