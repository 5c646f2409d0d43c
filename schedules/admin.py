from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from core.errors import DomainError

from . import services
from .models import Schedule, ScheduleTick


class ScheduleTickInline(admin.TabularInline):
    model = ScheduleTick
    extra = 0
    can_delete = False
    fields = ("tick", "outcome", "job", "error_code")
    readonly_fields = fields
    ordering = ["-tick"]

    def has_add_permission(self, request: HttpRequest, obj: Schedule | None = None) -> bool:
        return False


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "function", "cron", "interval_seconds", "overlap", "paused", "next_run_at")
    list_filter = ("paused", "overlap")
    search_fields = ("name", "owner__username", "function__name")
    list_select_related = ("owner", "function")
    readonly_fields = ("next_run_at", "anchor", "last_job", "created_at", "updated_at")
    raw_id_fields = ("function",)
    inlines = [ScheduleTickInline]
    actions = ["pause", "resume"]

    def save_model(self, request: HttpRequest, obj: Schedule, form, change: bool) -> None:
        """Through the service, which checks the timing and sets the next tick (from now)."""
        try:
            services.update_schedule(schedule=obj, cron=obj.cron.strip(), interval_seconds=obj.interval_seconds)
        except DomainError as exc:
            messages.error(request, f"Not saved: {exc.detail}")

    @admin.action(description="Pause")
    def pause(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        for schedule in queryset:
            services.pause(schedule=schedule)
        messages.info(request, f"{len(queryset)} schedule(s) paused.")

    @admin.action(description="Resume (from the next tick)")
    def resume(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        for schedule in queryset:
            services.resume(schedule=schedule)
        messages.info(request, f"{len(queryset)} schedule(s) resumed.")
