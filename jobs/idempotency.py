"""Idempotent submits: a request repeated with the same `Idempotency-Key` and the same body gets the first answer,
however many copies arrive and however close together.

`once` inserts the key's row first, in the transaction that makes the job (or function): the database's unique
constraint lets one request through, and a duplicate waits for it to commit (PostgreSQL blocks on the unique
index; SQLite has one writer at a time), then finds its row and answers what it made.
"""
import hashlib
import json
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import DomainError, Unprocessable

from .models import IdempotencyKey

logger = logging.getLogger(__name__)

T = TypeVar("T")
MAX_KEY_LENGTH = 255


def fingerprint(body: Any) -> str:
    """SHA-256 of a request body: JSON with sorted keys (uploaded files by their content's hash)."""
    def default(value: Any) -> str:
        if hasattr(value, "read"):  # an uploaded file
            value.seek(0)
            digest = hashlib.sha256(value.read()).hexdigest()
            value.seek(0)
            return f"file:{getattr(value, 'name', '')}:{digest}"
        return str(value)

    return hashlib.sha256(json.dumps(body, sort_keys=True, default=default).encode()).hexdigest()


def check_key(key: str) -> str:
    """Raises DomainError `invalid_idempotency_key` for a key that is empty, too long or not printable ASCII."""
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise DomainError(f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable ASCII characters.",
                          code="invalid_idempotency_key")
    return key


def once(*, owner: User, scope: str, key: str, body_fingerprint: str, make: Callable[[], T],
         made: Callable[[IdempotencyKey], T], record: Callable[[IdempotencyKey, T], None]) -> tuple[T, bool]:
    """Run `make()` once per (owner, scope, key); returns (what it made, False), or for a repeat with the same body
    (what the first made, True). Raises Unprocessable `idempotency_key_reused` when the key came with another body.

    `record(row, thing)` stores what was made on the key's row; `made(row)` reads it back. A `make()` that raises
    leaves no key behind, so the client may retry it.
    """
    check_key(key)
    try:
        with transaction.atomic():
            # Written first: on SQLite a transaction that reads before it writes can fail to get the write lock.
            IdempotencyKey.objects.filter(owner=owner, scope=scope, key=key, created_at__lt=_expired()).delete()
            row = IdempotencyKey.objects.create(owner=owner, scope=scope, key=key, fingerprint=body_fingerprint)
            thing = make()
            record(row, thing)
            return thing, False
    except IntegrityError:
        row = IdempotencyKey.objects.filter(owner=owner, scope=scope, key=key).first()
        if row is None:  # the error was another constraint's, not a duplicate key
            raise
    if row.fingerprint != body_fingerprint:
        raise Unprocessable("This Idempotency-Key was used with another request body.",
                            code="idempotency_key_reused")
    logger.info("%s with idempotency key %r of user %s: answered again", scope, key, owner.pk)
    return made(row), True


def _expired() -> Any:
    return timezone.now() - timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL)


def purge_expired_keys() -> int:
    """Delete the keys older than IDEMPOTENCY_KEY_TTL; returns how many."""
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=_expired()).delete()
    return deleted
