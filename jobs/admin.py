from django.contrib import admin

from .models import Function, FunctionVersion, Job


class FunctionVersionInline(admin.TabularInline):
    model = FunctionVersion
    fields = ("number", "sha256", "files", "unpacked_bytes", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("-number",)


@admin.register(Function)
class FunctionAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "version", "memory_mb", "timeout_seconds", "default_model", "created_at",
                    "deleted_at")
    list_filter = ("deleted_at", "created_at")
    search_fields = ("name", "id", "owner__username")
    readonly_fields = ("id", "version", "created_at", "updated_at")
    inlines = [FunctionVersionInline]


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "status", "function", "owner", "model_id", "prompt_tokens", "completion_tokens",
                    "duration_ms", "worker_id", "created_at")
    list_filter = ("status", "model_id", "created_at", "finished_at")
    search_fields = ("id", "function__name", "owner__username", "model_id", "error_code")
    list_select_related = ("function", "owner")
    date_hierarchy = "created_at"
    # Everything the worker writes is read-only: operators look, the worker decides.
    readonly_fields = ("id", "owner", "function", "function_version", "model_id", "node", "queue", "input_data",
                       "memory_mb", "timeout_seconds", "status", "error_code", "error_message", "exit_code",
                       "stdout", "stderr", "stdout_truncated", "stderr_truncated", "result", "worker_id",
                       "container_id", "deliveries", "created_at", "started_at", "finished_at", "duration_ms",
                       "peak_memory_bytes", "prompt_tokens", "completion_tokens", "llm_calls")

    def has_add_permission(self, request) -> bool:
        return False
