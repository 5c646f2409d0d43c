from celery import shared_task

from .delivery import deliver, prune, sweep


@shared_task(name="outbound.deliver", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def deliver_task(event_pk: int) -> None:
    deliver(event_pk)


@shared_task(name="outbound.sweep", ignore_result=True)
def sweep_task() -> None:
    sweep()


@shared_task(name="outbound.prune", ignore_result=True)
def prune_task() -> None:
    prune()
