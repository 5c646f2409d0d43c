"""Request rates per user, from their quota (set by operators in the admin): over it, 429 with Retry-After."""
from typing import Any

from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from .models import Quota


class QuotaRateThrottle(SimpleRateThrottle):
    """At most `Quota.requests_per_minute` requests a minute per user (no quota or no rate: no limit).

    Counts live in Django's cache: Redis when REDIS_URL is set (shared by every web process), else files under
    VAR_DIR/cache (shared by the web processes of one host).
    """

    scope = "user"

    def get_rate(self) -> None:
        return None  # per user, read in allow_request

    def allow_request(self, request: Request, view: Any) -> bool:
        rate = _requests_per_minute(request.user)
        if rate is None:
            return True
        self.rate = f"{rate}/min"
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}


def _requests_per_minute(user: Any) -> int | None:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    try:
        quota = user.quota  # read with the key (accounts.services.authenticate_key): no query here
    except Quota.DoesNotExist:
        return None
    return quota.requests_per_minute
