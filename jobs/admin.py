import json
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Count, F, QuerySet
from django.http import Http404, HttpRequest, JsonResponse, StreamingHttpResponse
from django.templatetags.static import static
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from core.errors import DomainError
from core.formatting import count, money

from . import services
from .events.feed import event_stream_response, open_feed
from .events.store import event_store
from .export import jobs_csv_lines
from .models import DependencyLayer, Function, FunctionVersion, Job, LLMCall, Receipt


class FunctionVersionInline(admin.TabularInline):
    model = FunctionVersion
    fields = ("number", "runtime", "sha256", "files", "unpacked_bytes", "requirements", "dependencies", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("-number",)

    @admin.display(description="dependencies")
    def dependencies(self, version: FunctionVersion) -> str:
        """The build's state, linked to its layer (whose page has the log)."""
        if version.layer is None:
            return version.dependency_status or "-"
        url = reverse("admin:jobs_dependencylayer_change", args=[version.layer_id])
        return format_html('<a href="{}">{}</a>', url, version.dependency_status)


@admin.register(DependencyLayer)
class DependencyLayerAdmin(admin.ModelAdmin):
    """Layers are built by workers and removed by the cleanup: operators look, and read a failed build's log."""

    list_display = ("short_key", "status", "error_code", "size_bytes", "build_seconds", "versions_count",
                    "created_at", "unused_since")
    list_filter = ("status", "error_code", "created_at")
    search_fields = ("key", "requirements")
    exclude = ("log",)
    readonly_fields = ("key", "status", "error_code", "requirements", "runtime_image", "image_id", "packages",
                       "modules", "size_bytes", "archive_bytes", "archive_sha256", "build_started_at", "built_at",
                       "build_seconds", "unused_since", "created_at", "build_log")

    def get_queryset(self, request: HttpRequest) -> QuerySet[DependencyLayer]:
        return super().get_queryset(request).annotate(versions_total=Count("versions"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DependencyLayer | None = None) -> bool:
        return False

    @admin.display(description="layer", ordering="key")
    def short_key(self, layer: DependencyLayer) -> str:
        return layer.key[:12]

    @admin.display(description="versions", ordering="versions_total")
    def versions_count(self, layer: DependencyLayer) -> int:
        return layer.versions_total

    @admin.display(description="build log")
    def build_log(self, layer: DependencyLayer) -> SafeString:
        return _pre(layer.log)


@admin.register(Function)
class FunctionAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "version", "runtime", "memory_mb", "timeout_seconds", "default_model",
                    "created_at", "deleted_at")
    list_filter = ("deleted_at", "created_at")
    search_fields = ("name", "id", "owner__username")
    readonly_fields = ("id", "version", "created_at", "updated_at")
    inlines = [FunctionVersionInline]


def _pre(text: str) -> SafeString:
    return format_html('<pre style="white-space: pre-wrap; max-height: 30em; overflow: auto; margin: 0">{}</pre>', text)


def _json(value: Any) -> SafeString:
    return _pre(json.dumps(value, indent=2, ensure_ascii=False))


class _RecordInline(admin.TabularInline):
    """Rows the worker writes and nobody edits: shown, never added, changed or deleted."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False


class LLMCallInline(_RecordInline):
    """The job's model calls, oldest first: its part of the billing ledger, read-only."""

    model = LLMCall
    fields = ("created_at", "model_id", "node", "endpoint", "streamed", "status", "prompt_tokens",
              "completion_tokens", "estimated", "cost", "duration_ms", "done_reason", "error_code")
    readonly_fields = fields
    ordering = ("created_at", "id")
    verbose_name_plural = "LLM calls"


class ReceiptInline(_RecordInline):
    """The job's chain of signed receipts, in order (jobs.metering.receipts); `manage.py verify_ledger` checks them."""

    model = Receipt
    fields = ("seq", "kind", "call_id", "hash", "key_id", "created_at")
    readonly_fields = fields
    ordering = ("seq",)
    verbose_name_plural = "receipts"


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("short_id", "status", "function", "owner", "model_id", "tokens", "cost_shown", "duration",
                    "worker_id", "created_at")
    list_filter = ("status", "model_id", "node", "error_code", "created_at", "finished_at")
    search_fields = ("id", "function__name", "owner__username", "model_id", "error_code", "worker_id")
    list_select_related = ("function", "owner")
    date_hierarchy = "created_at"
    actions = ("cancel_jobs", "rerun_jobs", "export_csv")
    inlines = [LLMCallInline, ReceiptInline]
    # Everything the worker writes is read-only: operators look, the worker decides.
    fieldsets = (
        (None, {"fields": ("id", "status", "owner", "function", "function_version", "model_id", "node", "queue",
                           "worker_id", "container_id", "deliveries")}),
        ("Input and result", {"fields": ("input_shown", "result_shown")}),
        ("Live", {"fields": ("live_shown",)}),
        ("Output", {"fields": ("stdout_shown", "stdout_truncated", "stderr_shown", "stderr_truncated")}),
        ("Error", {"fields": ("error_code", "error_message", "exit_code")}),
        ("Resources", {"fields": ("memory_mb", "peak_memory", "timeout_seconds", "duration", "created_at",
                                  "started_at", "finished_at")}),
        ("Tokens and cost", {"fields": ("token_budget", "prompt_tokens", "completion_tokens", "llm_calls",
                                        "unmetered_calls", "estimated_calls", "cost_shown", "uncosted_calls",
                                        "ledger_link", "receipt_hash")}),
    )
    readonly_fields = tuple(name for _, options in fieldsets for name in options["fields"])

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_fieldsets(self, request: HttpRequest, obj: Job | None = None):
        # The live panel only while the job can still change; a finished job's record is below it.
        if obj is not None and obj.is_terminal:
            return [fieldset for fieldset in self.fieldsets if fieldset[0] != "Live"]
        return self.fieldsets

    def get_urls(self):
        events = path("<path:object_id>/events/", self.admin_site.admin_view(self.events_view),
                      name="jobs_job_events")
        return [events, *super().get_urls()]

    def events_view(self, request: HttpRequest, object_id: str) -> StreamingHttpResponse:
        """The job's live events for the admin page's EventSource (the same stream as the API's)."""
        job = self.get_object(request, object_id)
        if job is None or not self.has_view_permission(request, job):
            raise Http404("No such job.")
        try:
            feed = open_feed(job, store=event_store(), last_event_id=request.headers.get("Last-Event-ID") or None,
                             user=request.user.pk)
        except DomainError as exc:  # too many listeners: the page shows its record without the live panel
            return JsonResponse({"detail": exc.detail, "code": exc.code}, status=exc.status)
        return event_stream_response(feed)

    @admin.display(description="live")
    def live_shown(self, job: Job) -> SafeString:
        url = reverse("admin:jobs_job_events", args=[job.pk])
        return format_html('<div id="job-live" data-url="{}">{}{}</div>{}', url,
                           format_html('<p id="job-live-line">{}: waiting for events…</p>', job.status),
                           mark_safe('<pre id="job-live-output" style="white-space: pre-wrap; max-height: 30em; '
                                     'overflow: auto; margin: 0"></pre>'),
                           format_html('<script src="{}"></script>', static("jobs/job_live.js")))

    @admin.display(description="job", ordering="id")
    def short_id(self, job: Job) -> str:
        return str(job.id)[:8]

    @admin.display(description="tokens", ordering=F("prompt_tokens") + F("completion_tokens"))
    def tokens(self, job: Job) -> str:
        return count(job.llm_token_count)

    @admin.display(description=f"cost ({settings.BILLING_CURRENCY})", ordering="cost")
    def cost_shown(self, job: Job) -> str:
        unknown = f" (+{count(job.uncosted_calls)} unknown)" if job.uncosted_calls else ""
        return f"{money(job.cost)}{unknown}"

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, job: Job) -> str:
        return "–" if job.duration_ms is None else f"{job.duration_ms / 1000:.2f} s"

    @admin.display(description="peak memory")
    def peak_memory(self, job: Job) -> str:
        return "–" if job.peak_memory_bytes is None else f"{job.peak_memory_bytes / 2**20:.1f} MiB"

    @admin.display(description="input")
    def input_shown(self, job: Job) -> SafeString:
        return _json(job.input_data)

    @admin.display(description="result")
    def result_shown(self, job: Job) -> SafeString:
        return _json(job.result)

    @admin.display(description="stdout")
    def stdout_shown(self, job: Job) -> SafeString:
        return _pre(job.stdout)

    @admin.display(description="stderr")
    def stderr_shown(self, job: Job) -> SafeString:
        return _pre(job.stderr)

    @admin.display(description="ledger")
    def ledger_link(self, job: Job) -> SafeString:
        url = reverse("admin:jobs_llmcall_changelist") + f"?job__id__exact={job.pk}"
        return format_html('<a href="{}">the job\'s {} call(s) in the ledger</a>', url, count(job.llm_calls))

    # Cancelling and re-running change jobs (and start new ones): only staff who may change jobs see these actions.
    @admin.action(description="Cancel the selected jobs", permissions=["change"])
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        cancelled = ended = 0
        for job in queryset:
            try:
                services.cancel_job(job=job)
                cancelled += 1
            except DomainError:
                ended += 1
        self.message_user(request, f"Cancelled {cancelled} job(s).", messages.SUCCESS)
        if ended:
            self.message_user(request, f"{ended} job(s) had already ended and were left alone.", messages.WARNING)

    @admin.action(description="Re-run the selected jobs as new jobs (same function, model and input)",
                  permissions=["change"])
    def rerun_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        new_jobs = []
        for job in queryset.select_related("function", "owner"):
            if job.function.deleted_at is not None:
                self.message_user(request, f"Job {job.pk}: its function was deleted; not re-run.", messages.WARNING)
                continue
            try:
                new_jobs.append(services.submit_job(owner=job.owner, function=job.function, model_id=job.model_id,
                                                    input_data=job.input_data, token_budget=job.token_budget))
            except DomainError as exc:
                self.message_user(request, f"Job {job.pk}: not re-run: {exc.detail}", messages.ERROR)
        if new_jobs:
            links = format_html_join(", ", '<a href="{}">{}</a>', (
                (reverse("admin:jobs_job_change", args=[job.pk]), str(job.pk)[:8]) for job in new_jobs))
            self.message_user(request, format_html("Queued {} new job(s), with their functions' current code: {}",
                                                   len(new_jobs), links), messages.SUCCESS)

    @admin.action(description="Export the selected jobs as CSV (tokens and cost)", permissions=["view"])
    def export_csv(self, request: HttpRequest, queryset: QuerySet[Job]) -> StreamingHttpResponse:
        response = StreamingHttpResponse(jobs_csv_lines(queryset, currency=settings.BILLING_CURRENCY),
                                         content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="jobs.csv"'
        return response




@admin.register(LLMCall)
class LLMCallAdmin(admin.ModelAdmin):
    """The billing ledger, read-only: rows are written by the gateway alone, and each cost is fixed."""

    list_display = ("created_at", "job", "model_id", "node", "endpoint", "status", "prompt_tokens",
                    "completion_tokens", "estimated", "cost", "duration_ms", "error_code")
    list_filter = ("status", "estimated", "model_id", "node", "streamed", "created_at")
    search_fields = ("model_id", "error_code", "node")
    list_select_related = ("job",)
    date_hierarchy = "created_at"
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: LLMCall | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: LLMCall | None = None) -> bool:
        return False
