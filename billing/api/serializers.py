from typing import Any

from rest_framework import serializers

from ..models import COST_DIGITS

COST = {**COST_DIGITS, "coerce_to_string": True}


class FiguresSerializer(serializers.Serializer):
    """Usage figures (billing.reports.Figures). `cost` is the sum of the known costs; `uncostedCalls` counts the
    calls it leaves out, `unmeteredCalls` those whose tokens the node did not report, `estimatedCalls` those
    billed with counts the gateway estimated."""

    calls = serializers.IntegerField()
    failedCalls = serializers.IntegerField(source="failed_calls")
    unmeteredCalls = serializers.IntegerField(source="unmetered_calls")
    estimatedCalls = serializers.IntegerField(source="estimated_calls")
    uncostedCalls = serializers.IntegerField(source="uncosted_calls")
    promptTokens = serializers.IntegerField(source="prompt_tokens")
    completionTokens = serializers.IntegerField(source="completion_tokens")
    totalTokens = serializers.IntegerField(source="total_tokens")
    cost = serializers.DecimalField(**COST)
    jobs = serializers.IntegerField()


class UsageRowSerializer(serializers.Serializer):
    """One group (billing.reports.UsageRow): its key (only the fields of the chosen group_by) and its figures."""

    day = serializers.DateField(source="key.day", required=False)
    modelId = serializers.CharField(source="key.model_id", required=False)
    functionId = serializers.UUIDField(source="key.function_id", required=False)
    functionName = serializers.CharField(source="key.function_name", required=False)

    def to_representation(self, row: Any) -> dict[str, Any]:
        # The group's figures sit beside its key, in the same shape as the totals.
        return {**super().to_representation(row), **FiguresSerializer(row.figures).data}


class CostLimitSerializer(serializers.Serializer):
    """Cost against a monthly quota: spent this month, held by jobs queued or running (what they may still cost),
    and what is left for new jobs."""

    limit = serializers.DecimalField(**COST)
    used = serializers.DecimalField(**COST)
    held = serializers.DecimalField(**COST)
    remaining = serializers.DecimalField(**COST)


class CountLimitSerializer(serializers.Serializer):
    limit = serializers.IntegerField()
    used = serializers.IntegerField()
    held = serializers.IntegerField()
    remaining = serializers.IntegerField()


class QuotaStandingSerializer(serializers.Serializer):
    """Your use against your quota this calendar month (billing.quotas.Standing); a limit not set is null."""

    month = serializers.CharField(help_text="YYYY-MM")
    cost = CostLimitSerializer(allow_null=True)
    tokens = CountLimitSerializer(allow_null=True)
    concurrentJobs = CountLimitSerializer(source="concurrent_jobs", allow_null=True)
    requestsPerMinute = serializers.IntegerField(source="requests_per_minute", allow_null=True)
    shareWeight = serializers.FloatField(source="share_weight",
                                         help_text="Your weight in fair share of the nodes (docs/fair-share.md).")


class UsageRowSchema(FiguresSerializer):
    """How a usage row looks (documentation only): its key, the fields of the chosen group_by, beside its figures."""

    day = serializers.DateField(required=False)
    modelId = serializers.CharField(required=False)
    functionId = serializers.UUIDField(required=False)
    functionName = serializers.CharField(required=False)


class UsageSerializer(serializers.Serializer):
    """`GET /api/v1/usage/` (documentation only: the view assembles it)."""

    from_ = serializers.DateField()
    to = serializers.DateField()
    groupBy = serializers.ChoiceField(choices=["day", "model", "function"])
    currency = serializers.CharField()
    totals = FiguresSerializer()
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = UsageRowSchema(many=True)
    quota = QuotaStandingSerializer(allow_null=True, help_text="Your use against your quota this month; null "
                                                               "when you have no quota.")

    def get_fields(self) -> dict[str, serializers.Field]:
        # `from` is a Python keyword: the field is declared as from_ and named here.
        fields = super().get_fields()
        fields["from"] = fields.pop("from_")
        return fields


class ReceiptKeySerializer(serializers.Serializer):
    keyId = serializers.CharField()
    algorithm = serializers.ChoiceField(choices=["Ed25519"])
    publicKey = serializers.CharField(help_text="The raw 32-byte public key, base64.")
    createdAt = serializers.DateTimeField()
    retiredAt = serializers.DateTimeField(allow_null=True, help_text="When a newer key took over; its receipts "
                                                                      "still verify.")


class ReceiptKeysSerializer(serializers.Serializer):
    keys = ReceiptKeySerializer(many=True)
