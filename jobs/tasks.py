from celery import shared_task

from .runner import run_job


@shared_task(name="jobs.run_job", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job_task(job_id: str) -> None:
    run_job(job_id)
