"""The operator's usage dashboard in the admin.

It is wrapped in `admin.site.admin_view` by billing/urls.py (staff only, login redirect, never cached) and needs
the permission to view daily usage as well (superusers have it).
"""
from datetime import date
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from core import formatting
from core.errors import DomainError
from core.ranges import DateRange, range_from_query

from . import charts
from .dashboard import Report, presets, usage_report
from .quotas import standings
from .reports import Figures

VIEW_USAGE = "billing.view_usagedaily"
PROMPT, COMPLETION = charts.Series("prompt", "#4c78a8"), charts.Series("completion", "#f58518")
OK_CALLS, FAILED_CALLS = charts.Series("ok", "#72b7b2"), charts.Series("failed", "#e45756")
COST = charts.Series("cost", "#54a24b")


def require(request: HttpRequest, *permissions: str) -> None:
    if not request.user.has_perms(permissions):
        raise PermissionDenied


def _query(span: DateRange) -> str:
    return urlencode({"from": span.start.isoformat(), "to": span.end.isoformat()})


def _tick_labels(days: list[date], *, most: int = 12) -> list[str]:
    """Day labels along the axis: every day of a short range, else at most `most`, evenly spread."""
    step = -(-len(days) // most)
    return [day.strftime("%b %d") if index % step == 0 else "" for index, day in enumerate(days)]


def _cost_shown(figures: Figures) -> str:
    """A group's cost, saying how many of its calls have no known cost (a model without a price, say)."""
    unknown = f" (+{formatting.count(figures.uncosted_calls)} calls unknown)" if figures.uncosted_calls else ""
    return formatting.money(figures.cost) + unknown


def _charts(report: Report) -> dict[str, str]:
    days = [group.key for group in report.by_day]
    labels = [day.isoformat() for day in days]
    ticks = _tick_labels(days)
    figures = [group.figures for group in report.by_day]
    failure_rates = [(g.label, g.figures.failure_rate or 0.0, f"{formatting.percent(g.figures.failure_rate)} "
                      f"({g.figures.failed_calls:,} of {g.figures.calls:,})")
                     for g in report.by_model if g.figures.calls]
    failure_rates.sort(key=lambda row: -row[1])
    return {
        "tokens": charts.column_chart(
            labels=labels, tick_labels=ticks, series=[PROMPT, COMPLETION], title="Tokens per day",
            values=[[f.prompt_tokens, f.completion_tokens] for f in figures], fmt=formatting.short),
        # Half-width charts get a narrower drawing, so that their text is as large as the wide chart's.
        "cost": charts.column_chart(
            labels=labels, tick_labels=_tick_labels(days, most=6), series=[COST], width=560,
            title=f"Cost per day ({report.currency})", values=[[float(f.cost)] for f in figures],
            fmt=formatting.short_money),
        "calls": charts.column_chart(
            labels=labels, tick_labels=_tick_labels(days, most=6), series=[OK_CALLS, FAILED_CALLS], width=560,
            title="Calls per day", values=[[f.calls - f.failed_calls, f.failed_calls] for f in figures],
            fmt=formatting.short),
        "cost_by_model": charts.bar_list(
            [(g.label, float(g.figures.cost), _cost_shown(g.figures)) for g in report.by_model[:10]],
            color=COST.color, title="Cost by model"),
        "tokens_by_model": charts.bar_list(
            [(g.label, g.figures.total_tokens, formatting.count(g.figures.total_tokens))
             for g in sorted(report.by_model, key=lambda g: -g.figures.total_tokens)[:10]],
            color=PROMPT.color, title="Tokens by model"),
        "top_spenders": charts.bar_list(
            [(g.label, float(g.figures.cost), formatting.money(g.figures.cost)) for g in report.top_spenders],
            color=COST.color, title="Top spenders"),
        "failure_rate": charts.bar_list(failure_rates, color=FAILED_CALLS.color, title="Failure rate by model",
                                        scale=charts.nice_ceiling(max((r for _, r, _ in failure_rates), default=0))),
    }


def dashboard(request: HttpRequest) -> HttpResponse:
    """Usage over a range of days (`from`, `to`; the last 30 days by default), read from the daily roll-ups."""
    require(request, VIEW_USAGE)
    context = {**admin.site.each_context(request), "title": "Usage dashboard", "currency": settings.BILLING_CURRENCY,
               "presets": [(label, _query(span)) for label, span in presets()], "table_limit": 25,
               "legends": {"tokens": [PROMPT, COMPLETION], "calls": [OK_CALLS, FAILED_CALLS]}}
    try:
        span = range_from_query(request.GET)
    except DomainError as exc:
        context.update(error=exc.detail, error_code=exc.code, start=request.GET.get("from", ""),
                       end=request.GET.get("to", ""))
        return TemplateResponse(request, "admin/billing/dashboard.html", context, status=exc.status)
    report = usage_report(span=span, currency=settings.BILLING_CURRENCY)
    context.update(report=report, charts=_charts(report), start=span.start.isoformat(), end=span.end.isoformat(),
                   query=_query(span), quotas=standings())
    return TemplateResponse(request, "admin/billing/dashboard.html", context)
