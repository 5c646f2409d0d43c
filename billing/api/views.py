from django.conf import settings
from django.http import StreamingHttpResponse
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import Pagination

from .. import services
from ..views import csv_download
from .serializers import FiguresSerializer, UsageRowSerializer


class UsageView(APIView):
    """The caller's own usage over `from`..`to` (YYYY-MM-DD, both included; default the last 30 days), grouped by
    `group_by` = day (default), model or function: totals, and one paginated row per group."""

    def get(self, request: Request) -> Response:
        span = services.range_from_query(request.query_params)
        group_by = request.query_params.get("group_by") or "day"
        totals, rows = services.user_usage(owner=request.user, span=span, group_by=group_by)
        paginator = Pagination()
        page = paginator.paginate_queryset(rows, request, view=self)
        response = paginator.get_paginated_response(UsageRowSerializer(page, many=True).data)
        response.data = {"from": span.start.isoformat(), "to": span.end.isoformat(), "groupBy": group_by,
                         "currency": settings.BILLING_CURRENCY, "totals": FiguresSerializer(totals).data,
                         **response.data}
        return response


class JobsCsvView(APIView):
    """The caller's own jobs created in `from`..`to`, with tokens and cost, as CSV."""

    def perform_content_negotiation(self, request: Request, force: bool = False):
        # The answer is CSV whatever the client accepts; errors (bad dates) still answer in the JSON error shape.
        return super().perform_content_negotiation(request, force=True)

    def get(self, request: Request) -> StreamingHttpResponse:
        span = services.range_from_query(request.query_params)
        return csv_download(services.jobs_in_range(span, owner=request.user), span)
