"""Prices of models, and the daily roll-ups of the LLMCall ledger that the dashboard and the usage API read.

The ledger (`jobs.LLMCall`) stays the source of truth: every roll-up row is a sum of ledger rows, kept up to date
as each call is recorded and rebuilt from the ledger by `manage.py rebuild_usage_rollups`.
"""
from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

# Prices carry 6 decimals per 1,000 tokens, so a call's cost (tokens x price / 1000) is exact with 9; costs keep
# 10 and 24 digits in all, room for any total.
PRICE_DIGITS = {"max_digits": 16, "decimal_places": 6}
COST_DIGITS = {"max_digits": 24, "decimal_places": 10}
COST_QUANTUM = Decimal("1e-10")


class ModelPrice(models.Model):
    """The price of one model from `effective_from` on, until a later row of the same model takes over.

    A call is priced with the row in force at the moment it is recorded, and its cost is written on its ledger row
    there and then: adding or editing a price never changes a bill already made. To change a price, add a row with
    a later `effective_from`, which keeps the history readable.
    """

    model_id = models.CharField(max_length=200, help_text="As in the model catalogue and in jobs' modelId.")
    price_per_1k_prompt = models.DecimalField(**PRICE_DIGITS, validators=[MinValueValidator(Decimal(0))],
                                              help_text="Price of 1,000 prompt tokens, in BILLING_CURRENCY.")
    price_per_1k_completion = models.DecimalField(**PRICE_DIGITS, validators=[MinValueValidator(Decimal(0))],
                                                  help_text="Price of 1,000 completion tokens, in BILLING_CURRENCY.")
    effective_from = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model_id", "-effective_from"]
        constraints = [models.UniqueConstraint(fields=["model_id", "effective_from"], name="unique_model_price_start")]

    def __str__(self) -> str:
        return f"{self.model_id} from {self.effective_from:%Y-%m-%d %H:%M}"

    def cost_of(self, *, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """What these tokens cost at this price: exact (prices have 6 decimals, so costs need at most 9)."""
        cost = (prompt_tokens * self.price_per_1k_prompt + completion_tokens * self.price_per_1k_completion) / 1000
        return cost.quantize(COST_QUANTUM)


class UsageDaily(models.Model):
    """The sums of one day's ledger rows of one (owner, function, model), and the jobs created that day with that
    model: what the dashboard and usage API read.

    Token sums cover the metered calls only (both counts known); `unmetered_calls` says how many were not, and
    `estimated_calls` how many of the metered ones carry counts the gateway estimated. `cost`
    sums the calls whose cost is known; `uncosted_calls` says how many were left out (tokens or price unknown).
    The day is the call's date in the server's TIME_ZONE.
    """

    day = models.DateField()
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    function = models.ForeignKey("jobs.Function", on_delete=models.PROTECT, related_name="+")
    model_id = models.CharField(max_length=200)
    calls = models.PositiveBigIntegerField(default=0)
    failed_calls = models.PositiveBigIntegerField(default=0)
    unmetered_calls = models.PositiveBigIntegerField(default=0)
    estimated_calls = models.PositiveBigIntegerField(default=0)
    uncosted_calls = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(**COST_DIGITS, default=Decimal(0))
    jobs = models.PositiveBigIntegerField(default=0, help_text="Jobs created that day whose modelId is this model.")

    class Meta:
        ordering = ["-day", "owner", "function", "model_id"]
        verbose_name = "daily usage"
        verbose_name_plural = "daily usage"
        # The unique constraint's index (owner first) serves a user's own usage (the API) and lets the dashboard
        # group by (owner, function, model) in index order, without sorting; the day index serves ranges of days.
        constraints = [
            models.UniqueConstraint(fields=["owner", "function", "model_id", "day"], name="unique_usage_daily")
        ]
        indexes = [models.Index(fields=["day"])]

    def __str__(self) -> str:
        return f"{self.day} {self.model_id} ({self.calls} calls)"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Hold(models.Model):
    """The part of a running job's worst case (its token budget at its model's price) not yet spent: what it may
    still cost. Made when the job is admitted under a quota (billing.quotas.admit), shrunk as its calls are recorded,
    and deleted when the job ends, which releases what it did not spend. A job id, not a key: billing imports nothing
    from jobs."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    job_id = models.UUIDField(unique=True)
    model_id = models.CharField(max_length=200)
    cost = models.DecimalField(**COST_DIGITS, default=Decimal(0))
    tokens = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner"])]

    def __str__(self) -> str:
        return f"hold of job {self.job_id}"


class ReceiptKey(models.Model):
    """A public key that signs (or signed) receipts, published at `GET /api/v1/receipts/keys` so that anyone can
    verify a receipt offline. The private key never enters the database: it comes from RECEIPT_SIGNING_KEY or
    RECEIPT_SIGNING_KEY_FILE (billing.receipt_keys). A rotated-out key stays here, with `retired_at`, so that the
    receipts it signed still verify by their `keyId`."""

    key_id = models.CharField(max_length=32, unique=True, help_text="The first 16 hex digits of the SHA-256 of "
                                                                     "the raw public key.")
    public_key = models.CharField(max_length=64, help_text="The raw 32-byte Ed25519 public key, base64.")
    created_at = models.DateTimeField(default=timezone.now)
    retired_at = models.DateTimeField(null=True, blank=True, help_text="When another key took over signing.")

    class Meta:
        ordering = ["created_at", "key_id"]

    def __str__(self) -> str:
        return f"receipt key {self.key_id}" + (" (retired)" if self.retired_at else "")
