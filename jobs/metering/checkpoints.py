"""A user's signed daily checkpoints of their job receipts (jobs.metering.receipts).

Once a day is over (and an hour more, for the job receipts of the day's last moments to commit), each user who
closed jobs that day gets one checkpoint: the hashes of the job receipts that closed that day, chained to the
user's previous checkpoint (`prev`), signed like a receipt. Checkpoints are per user: nothing in one covers another
user's jobs, and sealing one user's day locks only that user's row. A user's days are sealed in order, so their
chain has no gap: sealing a day first seals the user's earlier days that are not sealed yet.
"""
import logging
from datetime import date, timedelta

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from billing.receipt_keys import publish, signing_key

from ..models import DayCheckpoint, Receipt, ReceiptKind
from .receipts import GENESIS, VERSION, canonical, instant, sha256_hex

logger = logging.getLogger(__name__)

GRACE = timedelta(hours=1)
# How far back the beat task looks for unsealed days; an older one is sealed when it is asked for (or a later day of
# its user is sealed).
LOOK_BACK = timedelta(days=7)


def last_sealable_day() -> date:
    """The last day whose job receipts are all written: it ended at least GRACE ago (the server's TIME_ZONE)."""
    return timezone.localdate(timezone.now() - GRACE) - timedelta(days=1)


def checkpoint_of(*, owner_id: int, day: date) -> DayCheckpoint | None:
    """The user's checkpoint of `day`, sealed now if the day is over and was not yet; None when the day is not over
    or the user closed no job that day."""
    if day > last_sealable_day():
        return None
    found = DayCheckpoint.objects.filter(owner_id=owner_id, day=day).first()
    return found or _seal_through(owner_id, day)


def seal_due_days() -> int:
    """Seal every user's days of the last LOOK_BACK that are over and not sealed yet (a beat task); returns how many
    of those days were sealed."""
    limit = last_sealable_day()
    closed = set(Receipt.objects.filter(kind=ReceiptKind.JOB, day__lte=limit, day__gt=limit - LOOK_BACK).order_by()
                 .values_list("owner_id", "day").distinct())
    sealed = 0
    sealed_before = set(DayCheckpoint.objects.filter(day__gt=limit - LOOK_BACK).values_list("owner_id", "day"))
    for owner_id, day in sorted(closed - sealed_before):
        if not DayCheckpoint.objects.filter(owner_id=owner_id, day=day).exists():
            sealed += _seal_through(owner_id, day) is not None
    return sealed


def _seal_through(owner_id: int, day: date) -> DayCheckpoint | None:
    """Seal the user's unsealed days up to `day`, in order, under a lock of the user's row; `day`'s checkpoint."""
    publish(signing_key())
    with transaction.atomic():
        get_user_model().objects.select_for_update().filter(pk=owner_id).first()
        last = DayCheckpoint.objects.filter(owner_id=owner_id).order_by("-day").first()
        start = last.day + timedelta(days=1) if last else None
        days = Receipt.objects.filter(owner_id=owner_id, kind=ReceiptKind.JOB, day__lte=day)
        if start is not None:
            days = days.filter(day__gte=start)
        prev = last.hash if last else GENESIS
        for unsealed in sorted(set(days.values_list("day", flat=True))):
            prev = _seal(owner_id, unsealed, prev).hash
    return DayCheckpoint.objects.filter(owner_id=owner_id, day=day).first()


def _seal(owner_id: int, day: date, prev: str) -> DayCheckpoint:
    key = signing_key()
    hashes = list(Receipt.objects.filter(owner_id=owner_id, kind=ReceiptKind.JOB, day=day)
                  .order_by("created_at", "id").values_list("hash", flat=True))
    body = {"v": VERSION, "kind": "day", "user": owner_id, "day": day.isoformat(), "jobs": hashes,
            "prev": prev, "keyId": key.key_id, "sealedAt": instant(timezone.now())}
    data = canonical(body)
    checkpoint = DayCheckpoint.objects.create(owner_id=owner_id, day=day, body=data.decode(), hash=sha256_hex(data),
                                              key_id=key.key_id, signature=key.sign(data))
    logger.info("user %s: day %s sealed over %d job receipts", owner_id, day, len(hashes))
    return checkpoint
