"""The jobs export: jobs with their tokens and cost as CSV, for the users' API and the operator's admin."""
import csv
from collections.abc import Iterable
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import StreamingHttpResponse

from billing.models import COST_QUANTUM
from core.ranges import DateRange, created_in_days

from .models import Job


def jobs_in_range(span: DateRange, *, owner: User | None = None) -> QuerySet[Job]:
    """Jobs created in `span`; only `owner`'s when given."""
    jobs = created_in_days(Job.objects.all(), span.start, span.end)
    return jobs.filter(owner=owner) if owner is not None else jobs


CSV_COLUMNS = ["job_id", "created_at", "owner", "function_id", "function_name", "model_id", "status", "duration_ms",
               "llm_calls", "unmetered_calls", "estimated_calls", "uncosted_calls", "prompt_tokens", "completion_tokens",
               "total_tokens", "cost", "currency", "receipt_hash"]


class _Echo:
    """A file that hands back what is written to it, so csv.writer can feed a streaming response line by line."""

    def write(self, value: str) -> str:
        return value


def _text_cell(value: str) -> str:
    """A user-chosen text (a function's name) that a spreadsheet would run as a formula is quoted."""
    return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def jobs_csv_lines(jobs: QuerySet[Job], *, currency: str) -> Iterable[str]:
    """The jobs as CSV lines (header first), oldest first: tokens and cost (the sum of the calls' known costs;
    `uncosted_calls` says how many calls it leaves out; `estimated_calls` how many were billed with counts the
    gateway estimated), and the hash of the job receipt that closed the job's receipts (empty until it ended)."""
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    rows = (jobs.order_by("created_at", "id")
            .values_list("id", "created_at", "owner__username", "function_id", "function__name", "model_id",
                         "status", "duration_ms", "llm_calls", "unmetered_calls", "estimated_calls", "uncosted_calls",
                         "prompt_tokens", "completion_tokens", "cost", "receipt_hash"))
    for (job_id, created_at, owner, function_id, function_name, model_id, status, duration_ms, llm_calls,
         unmetered_calls, estimated_calls, uncosted_calls, prompt_tokens, completion_tokens,
         cost, receipt_hash) in rows.iterator(chunk_size=2000):
        yield writer.writerow([
            job_id, created_at.isoformat(), _text_cell(owner), function_id, _text_cell(function_name), model_id,
            status, "" if duration_ms is None else duration_ms, llm_calls, unmetered_calls, estimated_calls,
            uncosted_calls,
            prompt_tokens, completion_tokens, prompt_tokens + completion_tokens,
            format(Decimal(cost).quantize(COST_QUANTUM), "f"), currency, receipt_hash,
        ])


def csv_download(jobs: QuerySet[Job], span: DateRange) -> StreamingHttpResponse:
    """`jobs` as a streamed CSV attachment named after the range (the admin's export and the users' API)."""
    response = StreamingHttpResponse(jobs_csv_lines(jobs, currency=settings.BILLING_CURRENCY),
                                     content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="jobs-{span.start}-{span.end}.csv"'
    return response
