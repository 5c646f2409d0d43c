from celery import shared_task

from .services import fire_due, prune_ticks


@shared_task(name="schedules.fire_due", ignore_result=True)
def fire_due_task() -> None:
    fire_due()


@shared_task(name="schedules.prune_ticks", ignore_result=True)
def prune_ticks_task() -> None:
    prune_ticks()
