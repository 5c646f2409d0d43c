import secrets
from typing import Any

from django.contrib.auth.models import User
from django.utils import timezone

from core.lookups import CachedLookup

from .models import ApiKey, hash_key

KEY_PREFIX = "ain_"
# Active keys by hash, with their user and quota: each request gets its own copy, so no two requests share a mutable
# User. Invalidated by any change to a key, a user or a quota (`forget_keys`).
_active_keys: CachedLookup[ApiKey] = CachedLookup("api-keys", copies=True)


def create_api_key(*, user: User, name: str = "") -> tuple[ApiKey, str]:
    """Create a key for `user`; returns the row and the raw key, which is not stored anywhere."""
    raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey.objects.create(user=user, name=name, prefix=raw_key[:12], key_hash=hash_key(raw_key))
    return api_key, raw_key


def authenticate_key(raw_key: str) -> ApiKey | None:
    """The active key matching `raw_key` (its user and quota read with it), or None. Marks the key used (at most once
    a minute, to spare writes). Cached (core.lookups): a hit runs no SQL."""
    key_hash = hash_key(raw_key)
    api_key = _active_keys.get(key_hash, lambda: _load_active_key(key_hash))
    if api_key is None:
        return None
    now = timezone.now()
    if api_key.last_used_at is None or (now - api_key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
        _active_keys.replace(key_hash, api_key)
    return api_key


def _load_active_key(key_hash: str) -> ApiKey | None:
    return (
        ApiKey.objects.select_related("user", "user__quota")
        .filter(key_hash=key_hash, revoked_at__isnull=True, user__is_active=True)
        .first()
    )


def forget_keys(**_: Any) -> None:
    """Signal receiver (accounts.apps): a key, user or quota changed, so every cached key is looked up again."""
    _active_keys.invalidate()


def revoke_api_key(*, api_key: ApiKey) -> None:
    ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    forget_keys()
