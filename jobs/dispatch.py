"""Hands a job to the broker: the one place where services reach Celery, so they can be used (and tested) with no
broker in sight and the task's signature is named once."""
import uuid

from .tasks import run_job_task


def enqueue_job(job_id: uuid.UUID, queue: str) -> None:
    run_job_task.apply_async(args=[str(job_id)], queue=queue, routing_key=queue)
