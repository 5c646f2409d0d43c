from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from . import services
from .models import ApiKey, Quota


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Staff may rename a key and revoke it. A key's owner never changes, and a revoked key stays revoked: moving a
    key would hand its holder another user's functions and bills, and un-revoking would revive a leaked key."""

    list_display = ("prefix", "user", "name", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("prefix", "name", "user__username")
    readonly_fields = ("user", "prefix", "key_hash", "created_at", "last_used_at", "revoked_at")
    actions = ("revoke_keys",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A key made in the admin would never be shown to anyone; use `manage.py create_api_key`.
        return False

    @admin.action(description="Revoke the selected keys", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for api_key in queryset:
            services.revoke_api_key(api_key=api_key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).", messages.SUCCESS)

@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    """Operators set each user's limits here; the usage dashboard shows where each user stands against them."""

    list_display = ("user", "requests_per_minute", "max_concurrent_jobs", "monthly_tokens", "monthly_cost",
                    "default_token_budget", "share_weight", "updated_at")
    search_fields = ("user__username",)
    autocomplete_fields = ("user",)
    readonly_fields = ("updated_at",)
