from django.contrib import admin

from .models import ApiKey, Quota


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "name", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("prefix", "name", "user__username")
    readonly_fields = ("prefix", "key_hash", "created_at", "last_used_at")

    def has_add_permission(self, request) -> bool:
        # A key made in the admin would never be shown to anyone; use `manage.py create_api_key`.
        return False


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    """Operators set each user's limits here; the usage dashboard shows where each user stands against them."""

    list_display = ("user", "requests_per_minute", "max_concurrent_jobs", "monthly_tokens", "monthly_cost",
                    "default_token_budget", "updated_at")
    search_fields = ("user__username",)
    autocomplete_fields = ("user",)
    readonly_fields = ("updated_at",)
