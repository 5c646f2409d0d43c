from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.permissions import AllowAny
from rest_framework.views import APIView

from core.api import Pagination
from core.ranges import range_from_query
from core.schema import errors

from ..models import ReceiptKey
from ..quotas import standing
from ..receipt_keys import ALGORITHM, publish, signing_key
from ..reports import user_usage
from .serializers import (FiguresSerializer, QuotaStandingSerializer, ReceiptKeysSerializer, UsageRowSerializer,
                          UsageSerializer)


class UsageView(APIView):
    """The caller's own usage over `from`..`to` (YYYY-MM-DD, both included; default the last 30 days), grouped by
    `group_by` = day (default), model or function: totals, one paginated row per group, and where the caller stands
    against their quota this month."""

    @extend_schema(
        summary="Your usage", responses={200: UsageSerializer, **errors(
            (400, "invalid_date"), (400, "invalid_range"), (400, "invalid_group_by"), (404, "not_found"))},
        parameters=[
            OpenApiParameter("from", OpenApiTypes.DATE, description="First day (YYYY-MM-DD)."),
            OpenApiParameter("to", OpenApiTypes.DATE, description="Last day, included (YYYY-MM-DD)."),
            OpenApiParameter("group_by", OpenApiTypes.STR, enum=["day", "model", "function"]),
            OpenApiParameter("page", {"type": "integer", "minimum": 1}),
            OpenApiParameter("page_size", {"type": "integer", "minimum": 1, "maximum": Pagination.max_page_size}),
        ])
    def get(self, request: Request) -> Response:
        span = range_from_query(request.query_params, blank_is_absent=False)
        group_by = request.query_params.get("group_by", "day")
        totals, rows = user_usage(owner=request.user, span=span, group_by=group_by)
        paginator = Pagination()
        page = paginator.paginate_queryset(rows, request, view=self)
        response = paginator.get_paginated_response(UsageRowSerializer(page, many=True).data)
        quota = standing(owner=request.user)
        response.data = {"from": span.start.isoformat(), "to": span.end.isoformat(), "groupBy": group_by,
                         "currency": settings.BILLING_CURRENCY, "totals": FiguresSerializer(totals).data,
                         **response.data, "quota": QuotaStandingSerializer(quota).data if quota else None}
        return response


class ReceiptKeysView(APIView):
    """Every public key that signs or signed receipts, retired ones too: what a receipt's `keyId` names. Public:
    anyone holding a receipt may check it."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []

    @extend_schema(summary="The public keys of receipts", tags=["receipts"], auth=[],
                   responses={200: ReceiptKeysSerializer})
    def get(self, request: Request) -> Response:
        publish(signing_key())  # a fresh installation that has signed nothing yet still shows its key
        keys = [{"keyId": key.key_id, "algorithm": ALGORITHM, "publicKey": key.public_key,
                 "createdAt": key.created_at, "retiredAt": key.retired_at} for key in ReceiptKey.objects.all()]
        return Response(ReceiptKeysSerializer({"keys": keys}).data)
