"""The receipts API: a job's chain of receipts, the caller's receipts since a day, and their signed daily
checkpoints (jobs.metering.receipts, jobs.metering.checkpoints). Only the caller's own: another user's job is 404.
Each receipt is given as the canonical JSON text that was hashed and signed, so a client checks those exact bytes."""
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import Cursor
from core.errors import NotFound
from core.ranges import day_start, parse_day
from core.schema import errors

from .. import services
from ..metering.checkpoints import checkpoint_of
from ..models import DayCheckpoint, Receipt

PAGE_SIZE = OpenApiParameter("page_size", {"type": "integer", "minimum": 1, "maximum": Cursor.max_page_size})
CURSOR = OpenApiParameter("cursor", OpenApiTypes.STR, description="The `next` link's cursor.")


class ReceiptSerializer(serializers.ModelSerializer):
    """One signed receipt: `receipt` is the canonical JSON; `hash` its SHA-256; `signature` Ed25519 over it by
    the key `keyId` (GET /api/v1/receipts/keys)."""

    jobId = serializers.UUIDField(source="job_id", read_only=True)
    keyId = serializers.CharField(source="key_id", read_only=True)
    receipt = serializers.CharField(source="body", read_only=True)

    class Meta:
        model = Receipt
        fields = ["jobId", "seq", "kind", "hash", "keyId", "signature", "receipt"]
        read_only_fields = fields


class ReceiptPageSerializer(serializers.Serializer):
    """One page of receipts; `next` is the following page's link (null on the last)."""

    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = ReceiptSerializer(many=True)


class CheckpointSerializer(serializers.ModelSerializer):
    """A user's signed checkpoint of one day: `checkpoint` (canonical JSON) lists the hashes of the job receipts
    that closed that day and chains to the user's previous checkpoint."""

    keyId = serializers.CharField(source="key_id", read_only=True)
    checkpoint = serializers.CharField(source="body", read_only=True)

    class Meta:
        model = DayCheckpoint
        fields = ["day", "hash", "keyId", "signature", "checkpoint"]
        read_only_fields = fields


def _page(request: Request, view: APIView, receipts, ordering: str) -> Response:
    paginator = Cursor()
    paginator.ordering = ordering
    page = paginator.paginate_queryset(receipts, request, view=view)
    return paginator.get_paginated_response(ReceiptSerializer(page, many=True).data)


class JobReceiptsView(APIView):
    @extend_schema(summary="A job's receipts, in chain order", tags=["receipts"],
                   parameters=[OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH), CURSOR, PAGE_SIZE],
                   responses={200: ReceiptPageSerializer, **errors((400, "invalid_cursor"), (404, "job_not_found"))})
    def get(self, request: Request, pk: str) -> Response:
        job = services.get_job(owner=request.user, job_id=pk)
        return _page(request, self, Receipt.objects.filter(job=job), "seq")


class ReceiptsView(APIView):
    @extend_schema(summary="Your receipts: every receipt of your jobs created from `since` on, chain by chain",
                   tags=["receipts"],
                   parameters=[OpenApiParameter("since", OpenApiTypes.DATE, description="First day (YYYY-MM-DD) of "
                                                "the jobs; default: all."), CURSOR, PAGE_SIZE],
                   responses={200: ReceiptPageSerializer, **errors((400, "invalid_date"), (400, "invalid_cursor"))})
    def get(self, request: Request) -> Response:
        receipts = Receipt.objects.filter(owner=request.user)
        if "since" in request.query_params:
            since = parse_day(request.query_params["since"], "since")
            receipts = receipts.filter(job__created_at__gte=day_start(since))
        return _page(request, self, receipts, "id")


class DayCheckpointView(APIView):
    @extend_schema(summary="Your signed checkpoint of one day's job receipts", tags=["receipts"],
                   parameters=[OpenApiParameter("day", OpenApiTypes.DATE, OpenApiParameter.PATH)],
                   responses={200: CheckpointSerializer, **errors((400, "invalid_date"), (404, "no_checkpoint"))})
    def get(self, request: Request, day: str) -> Response:
        checkpoint = checkpoint_of(owner_id=request.user.pk, day=parse_day(day, "day"))
        if checkpoint is None:
            raise NotFound(f"No checkpoint of {day}: the day is not over yet, or you closed no job that day.",
                           code="no_checkpoint")
        return Response(CheckpointSerializer(checkpoint).data)
