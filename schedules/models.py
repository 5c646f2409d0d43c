"""Schedules: a function run by its owner on a cron expression or an interval, with fixed input; each run an
ordinary job (admitted through jobs.services.submit_job: metered, visible, cancellable). `ScheduleTick` records
what became of each tick, once: its unique (schedule, tick) is the second guard, after the conditional claim of the
schedule's `next_run_at`, against two schedulers firing one tick."""
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Overlap(models.TextChoices):
    """What a tick does while the schedule's previous run is still queued or running."""

    SKIP = "skip"    # nothing: the tick is recorded as skipped
    QUEUE = "queue"  # the run waits for the previous one to end (at most one waits; later ticks are skipped)


class Schedule(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="schedules")
    function = models.ForeignKey("jobs.Function", on_delete=models.CASCADE, related_name="schedules")
    name = models.CharField(max_length=100)
    cron = models.CharField(max_length=100, blank=True, help_text="Five fields, UTC; or an interval instead.")
    interval_seconds = models.PositiveIntegerField(null=True, blank=True)
    input_data = models.JSONField(null=True, blank=True)
    model_id = models.CharField(max_length=200, blank=True)
    token_budget = models.PositiveBigIntegerField(null=True, blank=True)
    overlap = models.CharField(max_length=8, choices=Overlap.choices, default=Overlap.SKIP)
    paused = models.BooleanField(default=False)
    # An interval's ticks fall on anchor + k * interval.
    anchor = models.DateTimeField(default=timezone.now)
    next_run_at = models.DateTimeField(help_text="The next tick; claimed by a conditional UPDATE when it fires.")
    last_job = models.ForeignKey("jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["next_run_at"], name="schedule_due", condition=Q(paused=False))]
        constraints = [
            models.CheckConstraint(condition=(Q(cron="") & Q(interval_seconds__isnull=False))
                                   | (~Q(cron="") & Q(interval_seconds__isnull=True)), name="cron_or_interval"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.cron or f'every {self.interval_seconds} s'})"


class TickOutcome(models.TextChoices):
    SUBMITTED = "submitted"  # a job was made (`job`)
    WAITING = "waiting"      # overlap=queue: the run waits for the previous job to end
    SKIPPED = "skipped"      # the previous run had not ended (overlap=skip, or one run already waits)
    MISSED = "missed"        # the scheduler was down past SCHEDULE_CATCH_UP_SECONDS: not run (no burst)
    FAILED = "failed"        # the job was refused (`error_code`: quota_exceeded, unknown_model, ...)


class ScheduleTick(models.Model):
    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="ticks")
    tick = models.DateTimeField()
    outcome = models.CharField(max_length=16, choices=TickOutcome.choices)
    job = models.ForeignKey("jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    error_code = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["schedule", "-tick"]
        constraints = [models.UniqueConstraint(fields=["schedule", "tick"], name="unique_schedule_tick")]
        indexes = [models.Index(fields=["created_at"], name="schedule_waiting",
                                condition=Q(outcome=TickOutcome.WAITING))]

    def __str__(self) -> str:
        return f"{self.schedule_id} at {self.tick:%Y-%m-%d %H:%M:%S}: {self.outcome}"
