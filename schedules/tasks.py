from celery import shared_task

from .services import fire_due


@shared_task(name="schedules.fire_due", ignore_result=True)
def fire_due_task() -> None:
    fire_due()
