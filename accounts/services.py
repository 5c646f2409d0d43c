import secrets

from django.contrib.auth.models import User
from django.utils import timezone

from .models import ApiKey, hash_key

KEY_PREFIX = "ain_"


def create_api_key(*, user: User, name: str = "") -> tuple[ApiKey, str]:
    """Create a key for `user`; returns the row and the raw key, which is not stored anywhere."""
    raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey.objects.create(user=user, name=name, prefix=raw_key[:12], key_hash=hash_key(raw_key))
    return api_key, raw_key


def authenticate_key(raw_key: str) -> ApiKey | None:
    """The active key matching `raw_key`, or None. Marks the key used (at most once a minute, to spare writes)."""
    api_key = (
        ApiKey.objects.select_related("user", "user__quota")
        .filter(key_hash=hash_key(raw_key), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if api_key is None:
        return None
    now = timezone.now()
    if api_key.last_used_at is None or (now - api_key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    return api_key


def revoke_api_key(*, api_key: ApiKey) -> None:
    ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
