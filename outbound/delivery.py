"""Delivery of the outbox, on the workers of OUTBOUND_QUEUE: claim a due row, send it (outside any transaction:
an endpoint may take up to OUTBOUND_TIMEOUT_SECONDS), log the attempt, then mark it delivered, schedule its retry
or, after the last one, dead.

The claim is a conditional UPDATE that moves the row's `next_attempt_at` to the end of a lease: two messages for one
row (a retry's and the sweep's) attempt it once, and a worker killed mid-delivery leaves it pending, sent again by
the sweep when the lease ends. A row of an ordered stream is claimed only when no earlier row of the stream is
pending. Receivers see each event at least once, with the same `webhook-id`, and deduplicate by it.
"""
import json
import logging
import random
import time
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from . import dispatch
from .destinations import DestinationRefused
from .models import CallbackSecret, DeliveryAttempt, Destination, Event, EventStatus
from .signing import signed_headers
from .transport import Answer, SendFailed, post

logger = logging.getLogger(__name__)

# A claimed row is left alone for twice the attempt's timeout and this much more: room for the attempt and its
# bookkeeping. A lease that runs out early costs a second delivery of the event, which its receiver deduplicates.
LEASE_MARGIN_SECONDS = 1.0
SWEEP_BATCH = 1000
USER_AGENT = "infra-ainode-events/1"


def max_attempts() -> int:
    return len(settings.OUTBOUND_RETRY_SECONDS) + 1


def _claim(event_pk: int) -> Event | None:
    """Take row `event_pk` for one attempt if it is due (and first of its stream); None when it is not."""
    now = timezone.now()
    lease = now + timedelta(seconds=2 * settings.OUTBOUND_TIMEOUT_SECONDS + LEASE_MARGIN_SECONDS)
    earlier = Event.objects.filter(stream=OuterRef("stream"), status=EventStatus.PENDING, pk__lt=OuterRef("pk"))
    claimed = (Event.objects.filter(pk=event_pk, status=EventStatus.PENDING, next_attempt_at__lte=now)
               .filter(Q(stream="") | ~Exists(earlier))
               .update(next_attempt_at=lease, attempts=F("attempts") + 1))
    if claimed != 1:
        return None
    return Event.objects.select_related("endpoint").get(pk=event_pk)


def deliver(event_pk: int) -> str:
    """Make one attempt of outbox row `event_pk` if it is due; returns what became of it ("" when not due)."""
    event = _claim(event_pk)
    if event is None:
        return ""
    started, clock = timezone.now(), time.monotonic()
    answer, error = None, ""
    try:
        url, body, headers = _request(event)
        answer = post(url, body, headers, timeout=settings.OUTBOUND_TIMEOUT_SECONDS,
                      body_cap=settings.OUTBOUND_RESPONSE_BODY_BYTES)
    except (SendFailed, DestinationRefused) as exc:
        error = f"{exc.code}: {exc}"
    except _Undeliverable as exc:
        error = str(exc)
    duration_ms = round((time.monotonic() - clock) * 1000)
    outcome = _record(event, started, duration_ms, answer, error)
    logger.info("outbound event %s (%s %s): attempt %s %s in %s ms (%s)", event.pk, event.event_type,
                event.event_id, event.attempts, outcome, duration_ms, answer.status if answer else error)
    return outcome


class _Undeliverable(Exception):
    """The row has nowhere to go any more (its endpoint was turned off, the export's URL unset)."""


def _request(event: Event) -> tuple[str, bytes, dict[str, str]]:
    """The URL, body and headers of one attempt of `event`: signed anew (the timestamp is the attempt's)."""
    body = json.dumps(event.payload, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    now = timezone.now()
    if event.destination == Destination.WEBHOOK:
        if event.endpoint is None or not event.endpoint.active:
            raise _Undeliverable("endpoint_disabled: the endpoint was turned off")
        url, secrets = event.endpoint.url, event.endpoint.secrets_at(now)
    elif event.destination == Destination.CALLBACK:
        holder = CallbackSecret.objects.filter(owner_id=event.owner_id).first()
        url, secrets = event.url, holder.secrets_at(now) if holder else []
    else:
        if not settings.USAGE_EXPORT_URL:
            raise _Undeliverable("export_off: USAGE_EXPORT_URL is not set")
        url = settings.USAGE_EXPORT_URL
        secrets = [settings.USAGE_EXPORT_SECRET] if settings.USAGE_EXPORT_SECRET else []
        headers["Content-Type"] = "application/cloudevents+json"
    headers.update({"webhook-id": event.event_id, "webhook-timestamp": str(int(now.timestamp()))})
    if secrets:
        headers.update(signed_headers(secrets, message_id=event.event_id, timestamp=int(now.timestamp()), body=body))
    return url, body, headers


def _record(event: Event, started, duration_ms: int, answer: Answer | None, error: str) -> str:
    """Log the attempt and move the row on, unless its lease was lost to another attempt meanwhile."""
    succeeded = answer is not None and 200 <= answer.status < 300
    if answer is not None and not succeeded:
        error = f"http_{answer.status}"
    final = succeeded or event.attempts >= max_attempts() or error.startswith(("endpoint_disabled", "export_off"))
    pause = 0.0
    if succeeded:
        changes = {"status": EventStatus.DELIVERED, "delivered_at": timezone.now()}
    elif final:
        changes = {"status": EventStatus.DEAD}
    else:
        pause = settings.OUTBOUND_RETRY_SECONDS[event.attempts - 1] * (1 + random.random() / 10)
        changes = {"next_attempt_at": timezone.now() + timedelta(seconds=pause)}
    with transaction.atomic():
        DeliveryAttempt.objects.create(
            event=event, started_at=started, duration_ms=duration_ms, succeeded=succeeded, error=error[:500],
            status_code=answer.status if answer else None,
            response_body=answer.body.decode(errors="replace") if answer else "")
        moved = Event.objects.filter(pk=event.pk, status=EventStatus.PENDING, attempts=event.attempts).update(
            last_status_code=answer.status if answer else None, last_error=error[:500], **changes)
    if not moved:
        return "superseded"
    if not final:
        dispatch.send(event.pk, countdown=pause)
    elif event.stream:
        _send_next_of_stream(event)
    return "delivered" if succeeded else ("dead" if final else "retrying")


def _send_next_of_stream(event: Event) -> None:
    following = (Event.objects.filter(stream=event.stream, status=EventStatus.PENDING, pk__gt=event.pk)
                 .order_by("pk").values_list("pk", flat=True).first())
    if following is not None:
        dispatch.send(following)


def prune() -> int:
    """Remove the delivered and dead events (and their logs) older than OUTBOUND_KEEP_SECONDS; returns how many
    events. A usage record pruned may be exported again by a backfill, under its same id."""
    old = timezone.now() - timedelta(seconds=settings.OUTBOUND_KEEP_SECONDS)
    pks = list(Event.objects.filter(created_at__lt=old).exclude(status=EventStatus.PENDING)
               .values_list("pk", flat=True)[:SWEEP_BATCH * 10])
    return Event.objects.filter(pk__in=pks).delete()[1].get(Event._meta.label, 0)


def sweep(*, limit: int = SWEEP_BATCH) -> int:
    """Send every row that is due: retries whose message was lost, rows whose worker was killed mid-attempt (once
    their lease ends), rows the broker refused. Only the first due row of each stream. Returns how many it sent."""
    due = (Event.objects.filter(status=EventStatus.PENDING, next_attempt_at__lte=timezone.now())
           .order_by("pk").values_list("pk", "stream")[:limit])
    streams: set[str] = set()
    sent = 0
    for pk, stream in due:
        if stream:
            if stream in streams:
                continue
            streams.add(stream)
        dispatch.send(pk)
        sent += 1
    return sent
