"""Hands a job to the broker. Kept apart so that services never import Celery."""
import uuid


def enqueue_job(job_id: uuid.UUID, queue: str) -> None:
    from .tasks import run_job_task

    run_job_task.apply_async(args=[str(job_id)], queue=queue, routing_key=queue)
