from decimal import Decimal
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.serializers import StrictTypes

from ..models import EVENT_TYPES, Budget, BudgetMetric, DeliveryAttempt, Event, EventStatus, WebhookEndpoint


class WebhookEndpointSerializer(StrictTypes, serializers.ModelSerializer):
    """An endpoint as its owner sees it; its secret never, except once (`WebhookSecretSerializer`)."""

    url = serializers.URLField(max_length=2000)
    eventTypes = serializers.ListField(source="event_types", child=serializers.ChoiceField(choices=EVENT_TYPES),
                                       min_length=1, max_length=len(EVENT_TYPES))
    previousSecretValidUntil = serializers.DateTimeField(source="previous_until", read_only=True, allow_null=True)
    createdAt = serializers.DateTimeField(source="created_at", read_only=True)

    class Meta:
        model = WebhookEndpoint
        fields = ["id", "url", "description", "eventTypes", "active", "previousSecretValidUntil", "createdAt"]
        read_only_fields = ["id"]


class WebhookSecretSerializer(WebhookEndpointSerializer):
    """An endpoint just made, or its secret just rotated: the only answers that show the secret."""

    secret = serializers.CharField(read_only=True, help_text="Shown once: keep it to verify signatures.")

    class Meta(WebhookEndpointSerializer.Meta):
        fields = [*WebhookEndpointSerializer.Meta.fields, "secret"]


class CallbackSecretSerializer(serializers.Serializer):
    secret = serializers.CharField(read_only=True, help_text="Shown once: it signs your runs' callbacks.")
    previousSecretValidUntil = serializers.DateTimeField(source="previous_until", read_only=True, allow_null=True)


class DeliveryAttemptSerializer(serializers.ModelSerializer):
    startedAt = serializers.DateTimeField(source="started_at")
    durationMs = serializers.IntegerField(source="duration_ms")
    statusCode = serializers.IntegerField(source="status_code", allow_null=True)
    responseBody = serializers.CharField(source="response_body")

    class Meta:
        model = DeliveryAttempt
        fields = ["startedAt", "durationMs", "statusCode", "succeeded", "error", "responseBody"]
        read_only_fields = fields


class DeliverySerializer(serializers.ModelSerializer):
    """One event for one destination, and its attempts."""

    eventId = serializers.CharField(source="event_id")
    eventType = serializers.CharField(source="event_type")
    endpoint = serializers.UUIDField(source="endpoint_id", allow_null=True)
    status = serializers.ChoiceField(choices=EventStatus.choices)
    nextAttemptAt = serializers.DateTimeField(source="next_attempt_at")
    lastStatusCode = serializers.IntegerField(source="last_status_code", allow_null=True)
    lastError = serializers.CharField(source="last_error")
    createdAt = serializers.DateTimeField(source="created_at")
    deliveredAt = serializers.DateTimeField(source="delivered_at", allow_null=True)
    attempts = serializers.IntegerField()
    log = DeliveryAttemptSerializer(source="delivery_attempts", many=True)
    payload = serializers.JSONField()

    class Meta:
        model = Event
        fields = ["id", "eventId", "eventType", "destination", "endpoint", "status", "attempts", "nextAttemptAt",
                  "lastStatusCode", "lastError", "createdAt", "deliveredAt", "payload", "log"]
        read_only_fields = fields


class BudgetSerializer(StrictTypes, serializers.ModelSerializer):
    metric = serializers.ChoiceField(choices=BudgetMetric.choices)
    # A decimal string, as the API writes costs; at most ten digits before the point, which SQLite (it keeps
    # decimals as floats) reads back exactly.
    amount = serializers.RegexField(r"^[0-9]{1,10}(\.[0-9]{1,10})?$",
                                    help_text="Tokens, or cost in BILLING_CURRENCY, as a decimal string.")
    thresholds = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=1000), min_length=1,
                                       max_length=20, help_text="Percentages of `amount`, e.g. [50, 80, 95, 100].")
    thisKeyOnly = serializers.BooleanField(write_only=True, required=False, default=False,
                                           help_text="Count only the jobs submitted with the key of this request.")
    apiKey = serializers.SerializerMethodField(help_text="The first characters of the key whose jobs it counts; "
                                                         "null: all.")
    createdAt = serializers.DateTimeField(source="created_at", read_only=True)

    class Meta:
        model = Budget
        fields = ["id", "name", "metric", "amount", "thresholds", "thisKeyOnly", "apiKey", "createdAt"]
        read_only_fields = ["id"]

    @extend_schema_field({"type": "string", "nullable": True})
    def get_apiKey(self, budget: Budget) -> str | None:  # noqa: N802 (the field's name)
        return budget.api_key.prefix if budget.api_key_id else None

    def validate_amount(self, value: str) -> Decimal:
        return Decimal(value)

    def to_representation(self, budget: Budget) -> dict[str, Any]:
        data = super().to_representation(budget)
        data["amount"] = format(Decimal(budget.amount).normalize(), "f")
        return data

    def validate_thresholds(self, value: list[int]) -> list[Any]:
        return sorted(set(value))
