"""The operator's export of every user's jobs as CSV, linked from the usage dashboard.

Wrapped in `admin.site.admin_view` by jobs/urls.py (staff only, login redirect, never cached); it needs the
permissions to view jobs and daily usage as well (superusers have them).
"""
from django.http import HttpRequest, HttpResponse

from core.ranges import range_from_query
from billing.views import VIEW_USAGE, require
from core.errors import DomainError

from .export import csv_download, jobs_in_range


def jobs_csv(request: HttpRequest) -> HttpResponse:
    """Every user's jobs created in the range, with tokens and cost, as a CSV download."""
    require(request, VIEW_USAGE, "jobs.view_job")
    try:
        span = range_from_query(request.GET)
    except DomainError as exc:
        return HttpResponse(f"{exc.detail}\n", status=exc.status, content_type="text/plain")
    return csv_download(jobs_in_range(span), span)
