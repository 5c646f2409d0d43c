"""A Celery app module for a worker whose SQS poll loop stops for good after its first poll: the fault that a kombu
bug once caused (an error answer raised inside the poll's callback chain, which then never scheduled the next
poll). That cause is fixed in infra_ainode/sqs_broker.py, so no real server can bring the fault about any more; it
is injected here, at our own transport, to show what the worker's liveness file does then.
`celery -A tests.support.wedged_sqs_worker worker` (the `worker` fixture's `app=`)."""
from infra_ainode import sqs_broker
from infra_ainode.celery import app

__all__ = ["app"]


def _loop_once(self: sqs_broker.Channel, queue: str, messages_fetched: object = None) -> None:
    """The poll that just ended schedules no next one: the loop is over."""


sqs_broker.Channel._loop1 = _loop_once
