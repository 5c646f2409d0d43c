"""Hands an outbox row to the workers of OUTBOUND_QUEUE: the one place where this app reaches Celery (by task name,
so the web imports nothing of the worker). A message the broker refuses is only logged: the row is still pending,
and the sweep (outbound.delivery.sweep) sends it."""
import logging

from celery import current_app
from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)

DELIVER_TASK = "outbound.deliver"


def send(event_pk: int, *, countdown: float | None = None) -> None:
    queue = settings.OUTBOUND_QUEUE
    try:
        current_app.send_task(DELIVER_TASK, args=[event_pk], queue=queue, routing_key=queue, countdown=countdown)
    except Exception as exc:  # the broker's client raises many types; the sweep sends the row later
        logger.warning("outbound event %s: could not be handed to the broker (the sweep will): %s", event_pk, exc)


def send_on_commit(event_pks: list[int]) -> None:
    """Send `event_pks`, written by the current transaction, once it commits (nothing if it rolls back)."""
    if event_pks:
        transaction.on_commit(lambda: [send(pk) for pk in event_pks])
