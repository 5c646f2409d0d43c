import hashlib

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


def hash_key(raw_key: str) -> str:
    """Keys are 256-bit random tokens, so one SHA-256 is enough; a slow hash would only slow every request."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


class ApiKey(models.Model):
    """An API key of a user. Only its hash is stored; the key itself is shown once, when created."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, help_text="The first characters of the key, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"


class Quota(models.Model):
    """What one user may use, set by an operator in the admin; an empty limit is no limit.

    Per calendar month (TIME_ZONE): tokens and cost, with an up-front ceiling (a job's worst case, its token budget
    at its model's price, is held from submit to end; billing.quotas). At any moment: jobs queued or running. Per
    minute: API requests (accounts.throttling).
    """

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="quota")
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True,
                                                      help_text="API requests per minute; more answer 429.")
    max_concurrent_jobs = models.PositiveIntegerField(null=True, blank=True,
                                                      help_text="Jobs queued or running at once.")
    monthly_tokens = models.PositiveBigIntegerField(null=True, blank=True,
                                                    help_text="Tokens (prompt + completion) per calendar month.")
    monthly_cost = models.DecimalField(max_digits=24, decimal_places=10, null=True, blank=True,
                                       help_text="Cost per calendar month, in BILLING_CURRENCY.")
    default_token_budget = models.PositiveBigIntegerField(
        null=True, blank=True,
        help_text="The token budget of a job that has none (neither its run nor its function), when a monthly "
                  "limit applies; empty: QUOTA_DEFAULT_TOKEN_BUDGET.")
    share_weight = models.FloatField(
        default=1.0, validators=[MinValueValidator(0.01), MaxValueValidator(100.0)],
        help_text="This user's weight in fair share: with weight 2 they get twice the service of a weight-1 user "
                  "when both wait for the same node (docs/fair-share.md).")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["user__username"]

    def __str__(self) -> str:
        return f"quota of {self.user}"

    @property
    def limits_spending(self) -> bool:
        return self.monthly_tokens is not None or self.monthly_cost is not None
