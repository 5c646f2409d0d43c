from django.conf import settings
from rest_framework import serializers

from core.serializers import StrictTypes
from jobs.services import MAX_TOKEN_BUDGET

from ..models import Overlap, Schedule, ScheduleTick, TickOutcome


class ScheduleSerializer(StrictTypes, serializers.ModelSerializer):
    """A schedule: a cron expression (five fields, UTC) or an interval, with the run's fixed input."""

    functionId = serializers.UUIDField(source="function_id")
    intervalSeconds = serializers.IntegerField(source="interval_seconds", required=False, allow_null=True,
                                               min_value=settings.SCHEDULE_MIN_INTERVAL_SECONDS,
                                               max_value=366 * 86400)
    cron = serializers.CharField(required=False, allow_blank=True, max_length=100)
    inputData = serializers.JSONField(source="input_data", required=False, allow_null=True)
    modelId = serializers.CharField(source="model_id", required=False, allow_blank=True, max_length=200)
    tokenBudget = serializers.IntegerField(source="token_budget", required=False, allow_null=True, min_value=1,
                                           max_value=MAX_TOKEN_BUDGET)
    overlap = serializers.ChoiceField(choices=Overlap.choices, required=False)
    paused = serializers.BooleanField(read_only=True)
    nextRunAt = serializers.DateTimeField(source="next_run_at", read_only=True)
    lastJobId = serializers.UUIDField(source="last_job_id", read_only=True, allow_null=True)
    createdAt = serializers.DateTimeField(source="created_at", read_only=True)

    class Meta:
        model = Schedule
        fields = ["id", "name", "functionId", "cron", "intervalSeconds", "inputData", "modelId", "tokenBudget",
                  "overlap", "paused", "nextRunAt", "lastJobId", "createdAt"]
        read_only_fields = ["id"]


class ScheduleTickSerializer(serializers.ModelSerializer):
    outcome = serializers.ChoiceField(choices=TickOutcome.choices)
    jobId = serializers.UUIDField(source="job_id", allow_null=True)
    errorCode = serializers.CharField(source="error_code")

    class Meta:
        model = ScheduleTick
        fields = ["tick", "outcome", "jobId", "errorCode"]
        read_only_fields = fields
