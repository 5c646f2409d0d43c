"""What leaves the platform: the delivery outbox (`Event`, one row per event and destination, written in the
transaction of what it reports), its log (`DeliveryAttempt`), where users want events (`WebhookEndpoint`, a run's
`JobCallback` and the owner's `CallbackSecret`), and the thresholds that fire once per period (`Budget`,
`ThresholdCrossing`).

This app imports no other of ours (its models name accounts' ApiKey, a lower room, by label): jobs and billing hand
it what it needs as arguments (ids, payloads, figures).
"""
import uuid
from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

# What a user may subscribe an endpoint to.
JOB_EVENT_TYPES = ("job.succeeded", "job.failed", "job.timed_out", "job.cancelled")
THRESHOLD_EVENT_TYPES = ("budget.threshold", "quota.threshold")
EVENT_TYPES = (*JOB_EVENT_TYPES, *THRESHOLD_EVENT_TYPES)


class SigningSecret(models.Model):
    """A secret that signs deliveries, with the one it replaced, still used beside it until `previous_until`
    (a rotation's overlap, WEBHOOK_SECRET_OVERLAP_SECONDS). Kept as written: HMAC needs the secret itself."""

    secret = models.CharField(max_length=100)
    previous_secret = models.CharField(max_length=100, blank=True)
    previous_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True

    def secrets_at(self, now: datetime) -> list[str]:
        """The secrets a delivery made at `now` is signed with: the current one, and the previous one in overlap."""
        if self.previous_secret and self.previous_until is not None and now < self.previous_until:
            return [self.secret, self.previous_secret]
        return [self.secret]


class WebhookEndpoint(SigningSecret):
    """A URL of a user's that receives the events it subscribed to, signed with its own secret."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.URLField(max_length=2000)
    description = models.CharField(max_length=200, blank=True)
    event_types = models.JSONField(default=list, help_text=f"Some of: {', '.join(EVENT_TYPES)}.")
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner"])]

    def __str__(self) -> str:
        return self.url


class CallbackSecret(SigningSecret):
    """The secret that signs a user's per-run callbacks (`callbackUrl` on a run)."""

    owner = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="callback_secret")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["owner"]

    def __str__(self) -> str:
        return f"callback secret of {self.owner}"


class JobCallback(models.Model):
    """A run's own callback URL, written with the job at admission; the job's end is sent there. A job id, not a
    key: this app imports nothing from jobs."""

    job_id = models.UUIDField(primary_key=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    url = models.URLField(max_length=2000)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]


class Destination(models.TextChoices):
    WEBHOOK = "webhook"    # a WebhookEndpoint
    CALLBACK = "callback"  # a run's callbackUrl
    EXPORT = "export"      # the operator's usage export (USAGE_EXPORT_URL)


class EventStatus(models.TextChoices):
    """An outbox row's life. Legal moves:

        pending ──> delivered
           └──────> dead        (its last attempt failed, or its endpoint is gone)
        delivered, dead ──> pending   (a manual redelivery)
    """

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class Event(models.Model):
    """One event for one destination: the outbox. Written in the transaction of what it reports, delivered by the
    workers of OUTBOUND_QUEUE (outbound.delivery), attempted until it is accepted or its retries are spent.

    `event_id` is what the receiver deduplicates by: the same on every attempt (and for every destination of one
    event). Rows of one `stream` are delivered one after another in the order of their `id` (the usage export's
    per-user order); rows with no stream in any order.
    """

    event_id = models.CharField(max_length=100)
    event_type = models.CharField(max_length=100)
    destination = models.CharField(max_length=16, choices=Destination.choices)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    endpoint = models.ForeignKey(WebhookEndpoint, null=True, blank=True, on_delete=models.CASCADE,
                                 related_name="events")
    url = models.URLField(max_length=2000, blank=True, help_text="Where a callback or export goes; an endpoint's "
                                                                 "own URL is read at each attempt.")
    stream = models.CharField(max_length=100, blank=True)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=EventStatus.choices, default=EventStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # When the next attempt is due; while an attempt runs, when its lease ends (a worker killed mid-delivery leaves
    # the row pending, and the sweep sends it again once the lease is over).
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            # A usage record is exported once: a backfill adds only what is missing.
            models.UniqueConstraint(fields=["event_id"], condition=Q(destination=Destination.EXPORT),
                                    name="unique_export_event"),
        ]
        indexes = [
            models.Index(fields=["next_attempt_at"], name="outbound_due", condition=Q(status=EventStatus.PENDING)),
            models.Index(fields=["stream", "id"], name="outbound_stream", condition=Q(status=EventStatus.PENDING)),
            models.Index(fields=["owner", "-id"]),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} ({self.status})"


class DeliveryAttempt(models.Model):
    """One attempt to deliver an event: the delivery log."""

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="delivery_attempts")
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    succeeded = models.BooleanField()
    error = models.CharField(max_length=500, blank=True)
    response_body = models.TextField(blank=True, help_text="The start of the answer (OUTBOUND_RESPONSE_BODY_BYTES).")

    class Meta:
        ordering = ["event", "started_at"]

    def __str__(self) -> str:
        return f"attempt at {self.started_at:%Y-%m-%d %H:%M:%S} ({self.status_code or self.error})"


class BudgetMetric(models.TextChoices):
    TOKENS = "tokens"
    COST = "cost"


class Budget(models.Model):
    """A user's own monthly alert budget: `budget.threshold` fires as their spending this month passes each of
    `thresholds` (percentages of `amount`); with `api_key`, the spending of the jobs that key submitted. It refuses
    nothing; the quota (set by the operator) does."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="budgets")
    api_key = models.ForeignKey("accounts.ApiKey", null=True, blank=True, on_delete=models.CASCADE, related_name="+",
                                help_text="Only the jobs this key submits; empty: all the owner's.")
    name = models.CharField(max_length=100)
    metric = models.CharField(max_length=16, choices=BudgetMetric.choices)
    amount = models.DecimalField(max_digits=24, decimal_places=10, help_text="Tokens, or cost in BILLING_CURRENCY.")
    thresholds = models.JSONField(default=list, help_text="Percentages, e.g. [50, 80, 95, 100].")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["owner", "name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.amount} {self.metric})"


class JobKey(models.Model):
    """The API key that submitted a job, recorded at admission only for keys that have a budget (the budget's
    spending is that of these jobs). A job id, not a key: this app imports nothing from jobs."""

    job_id = models.UUIDField(primary_key=True)
    api_key = models.ForeignKey("accounts.ApiKey", on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["api_key", "created_at"])]


class ThresholdCrossing(models.Model):
    """A threshold passed: once per (owner, subject, threshold, period), which the unique constraint guarantees when
    many jobs cross it at once. `subject` is `quota:tokens`, `quota:cost` or `budget:<id>`; `period` is the month."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    subject = models.CharField(max_length=100)
    threshold = models.PositiveIntegerField()
    period = models.CharField(max_length=16)
    used = models.DecimalField(max_digits=24, decimal_places=10)
    limit = models.DecimalField(max_digits=24, decimal_places=10)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["owner", "subject", "threshold", "period"],
                                               name="unique_threshold_crossing")]

    def __str__(self) -> str:
        return f"{self.subject} {self.threshold}% in {self.period}"
