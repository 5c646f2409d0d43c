"""The operator's pages under /admin/usage/: the export of every user's jobs as CSV (linked from the usage
dashboard), and fair share as it stands (linked from the admin's index).

Wrapped in `admin.site.admin_view` by jobs/urls.py (staff only, login redirect, never cached); each needs the
permission to view jobs as well, and the export the permission to view daily usage (superusers have them).
"""
from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from core.ranges import range_from_query
from billing.views import VIEW_USAGE, require
from core.errors import DomainError

from .export import csv_download, jobs_in_range
from .fairness.standings import pool_standings

VIEW_JOBS = "jobs.view_job"


def jobs_csv(request: HttpRequest) -> HttpResponse:
    """Every user's jobs created in the range, with tokens and cost, as a CSV download."""
    require(request, VIEW_USAGE, VIEW_JOBS)
    try:
        span = range_from_query(request.GET)
    except DomainError as exc:
        return HttpResponse(f"{exc.detail}\n", status=exc.status, content_type="text/plain")
    return csv_download(jobs_in_range(span), span)


def fair_share(request: HttpRequest) -> HttpResponse:
    """Each queue's and node's users now: jobs (or calls) waiting and in flight, recent service and share."""
    require(request, VIEW_JOBS)
    context = {**admin.site.each_context(request), "title": "Fair share", "pools": pool_standings(),
               "half_life": settings.FAIR_SHARE_HALF_LIFE_SECONDS}
    return TemplateResponse(request, "admin/jobs/fair_share.html", context)
