"""Use cases of events out: endpoints and their secrets, a run's callback, the events that jobs and thresholds
record (in their callers' transactions), and a manual redelivery. Views, tasks, admin actions and commands come
through here; nothing here speaks HTTP (delivery.py does, on the workers)."""
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from core.errors import DomainError, NotFound
from core.lookups import CachedLookup

from . import dispatch
from .destinations import check_url
from .models import (EVENT_TYPES, Budget, CallbackSecret, Destination, Event, EventStatus, JobCallback, JobKey,
                     SigningSecret, WebhookEndpoint)
from .signing import new_secret

# Whether an API key has a budget of its own, by key id: asked at every admission, so cached (core.lookups).
_keys_with_budgets: CachedLookup[tuple[bool]] = CachedLookup("key-budgets")


# --- endpoints and secrets --------------------------------------------------------------------------------------

def check_event_types(event_types: list[str]) -> list[str]:
    """`event_types` without repeats; raises DomainError `invalid_event_type` for an unknown one or none."""
    unknown = [name for name in event_types if name not in EVENT_TYPES]
    if unknown or not event_types:
        raise DomainError(f"Subscribe to one or more of {', '.join(EVENT_TYPES)}; unknown: {', '.join(unknown)}.",
                          code="invalid_event_type")
    return list(dict.fromkeys(event_types))


def create_endpoint(*, owner: User, url: str, event_types: list[str], description: str = "") -> WebhookEndpoint:
    """A new endpoint with a new secret (its `secret`, shown to the owner once). Raises DestinationRefused for a
    URL the operator does not allow, DomainError `invalid_event_type`."""
    check_url(url)
    return WebhookEndpoint.objects.create(owner=owner, url=url, event_types=check_event_types(event_types),
                                          description=description, secret=new_secret())


def update_endpoint(*, endpoint: WebhookEndpoint, url: str | None = None, event_types: list[str] | None = None,
                    description: str | None = None, active: bool | None = None) -> WebhookEndpoint:
    if url is not None:
        check_url(url)
        endpoint.url = url
    if event_types is not None:
        endpoint.event_types = check_event_types(event_types)
    if description is not None:
        endpoint.description = description
    if active is not None:
        endpoint.active = active
    endpoint.save()
    return endpoint


def rotate_secret(holder: SigningSecret) -> SigningSecret:
    """A new secret for `holder` (shown once); the old one still signs beside it for WEBHOOK_SECRET_OVERLAP_SECONDS,
    so that receivers can switch without missing a delivery."""
    holder.previous_secret = holder.secret
    holder.previous_until = timezone.now() + timedelta(seconds=settings.WEBHOOK_SECRET_OVERLAP_SECONDS)
    holder.secret = new_secret()
    holder.save(update_fields=["secret", "previous_secret", "previous_until"])
    return holder


def rotate_callback_secret(*, owner: User) -> CallbackSecret:
    """The owner's callback secret: made on the first call, rotated on the next ones."""
    holder, created = CallbackSecret.objects.get_or_create(owner=owner, defaults={"secret": new_secret()})
    return holder if created else rotate_secret(holder)


def get_endpoint(*, owner: User, endpoint_id: Any) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.filter(pk=_uuid(endpoint_id), owner=owner).first() if _uuid(endpoint_id) else None
    if endpoint is None:
        raise NotFound(f"Webhook endpoint {endpoint_id} not found.", code="webhook_not_found")
    return endpoint


def get_event(*, owner: User, event_pk: Any) -> Event:
    event = Event.objects.filter(pk=event_pk, owner=owner).first() if str(event_pk).isdigit() else None
    if event is None:
        raise NotFound(f"Delivery {event_pk} not found.", code="delivery_not_found")
    return event


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


# --- events -----------------------------------------------------------------------------------------------------

def add_callback(*, owner: User, job_id: Any, url: str) -> None:
    """Send the end of job `job_id` to `url` too; call it in the transaction that creates the job. Raises
    DestinationRefused for a URL the operator does not allow, DomainError `no_callback_secret` when the owner has no
    secret to sign callbacks with yet."""
    check_url(url)
    if not CallbackSecret.objects.filter(owner=owner).exists():
        raise DomainError("Create your callback secret first (POST /api/v1/webhooks/callback-secret): callbacks are "
                          "signed with it.", code="no_callback_secret")
    JobCallback.objects.create(job_id=job_id, owner=owner, url=url)


def note_key(*, job_id: Any, api_key_id: int) -> None:
    """Record that key `api_key_id` submitted job `job_id`, if the key has a budget of its own (only then is the
    job's spending needed per key); call it in the transaction that creates the job. A cache hit costs no SQL."""
    [has_budget] = _keys_with_budgets.get(
        str(api_key_id), lambda: (Budget.objects.filter(api_key_id=api_key_id).exists(),))
    if has_budget:
        JobKey.objects.create(job_id=job_id, api_key_id=api_key_id)


def budgets_changed(**_: Any) -> None:
    """Every process asks again which keys have budgets. Also a signal receiver (outbound.apps)."""
    _keys_with_budgets.invalidate()


def record(*, owner_id: int, event_type: str, data: Callable[[], dict[str, Any]],
           callback_url: str | None = None) -> list[Event]:
    """Write `event_type` for each of the owner's active endpoints subscribed to it, and for `callback_url`, in the
    caller's transaction; they are sent once it commits. `data` is called only when someone wants the event."""
    endpoints = [e for e in WebhookEndpoint.objects.filter(owner_id=owner_id, active=True)
                 if event_type in e.event_types]
    if not endpoints and not callback_url:
        return []
    event_id = f"evt_{uuid.uuid4().hex}"
    now = timezone.now()
    payload = {"id": event_id, "type": event_type, "createdAt": now.isoformat(), "data": data()}
    rows = [Event(event_id=event_id, event_type=event_type, destination=Destination.WEBHOOK, owner_id=owner_id,
                  endpoint=endpoint, payload=payload, created_at=now, next_attempt_at=now) for endpoint in endpoints]
    if callback_url:
        rows.append(Event(event_id=event_id, event_type=event_type, destination=Destination.CALLBACK,
                          owner_id=owner_id, url=callback_url, payload=payload, created_at=now, next_attempt_at=now))
    return write(rows)


def record_job_end(*, owner_id: int, job_id: Any, status: str, result: Callable[[], dict[str, Any]]) -> list[Event]:
    """A job ended with `status`: `job.<status>` to the owner's endpoints and to the run's callback URL. Call it in
    the transaction that moved the job (`result` gives the job's execution result)."""
    callback = JobCallback.objects.filter(job_id=job_id).values_list("url", flat=True).first()
    return record(owner_id=owner_id, event_type=f"job.{status}", data=result, callback_url=callback)


def write(rows: list[Event]) -> list[Event]:
    """Insert outbox rows and send them after the commit. bulk_create sets the ids on PostgreSQL and SQLite."""
    with transaction.atomic(savepoint=False):
        written = Event.objects.bulk_create(rows)
    dispatch.send_on_commit([row.pk for row in written])
    return written


def redeliver(*, event: Event) -> Event:
    """Attempt `event` again from now on, with all its retries, whatever became of it (delivered or dead); its id
    stays, so its receiver can tell it is the same event."""
    with transaction.atomic():
        Event.objects.filter(pk=event.pk).update(status=EventStatus.PENDING, attempts=0,
                                                 next_attempt_at=timezone.now(), delivered_at=None)
        dispatch.send_on_commit([event.pk])
    event.refresh_from_db()
    return event
