from django.contrib import admin
from django.http import HttpRequest
from django.utils import timezone

from .models import ModelPrice, UsageDaily
from .pricing import price_in_force


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """Prices are edited in the list itself. A change applies to calls recorded from then on: each call's cost was
    fixed when it was recorded. Add a row with a later `effective_from` to keep the price history."""

    list_display = ("model_id", "price_per_1k_prompt", "price_per_1k_completion", "effective_from", "in_force")
    list_editable = ("price_per_1k_prompt", "price_per_1k_completion", "effective_from")
    list_filter = ("model_id",)
    search_fields = ("model_id",)
    readonly_fields = ("created_at",)

    @admin.display(boolean=True, description="in force now")
    def in_force(self, price: ModelPrice) -> bool:
        current = price_in_force(model_id=price.model_id, at=timezone.now())
        return current is not None and current.pk == price.pk


@admin.register(UsageDaily)
class UsageDailyAdmin(admin.ModelAdmin):
    """The roll-ups are derived data (`manage.py rebuild_usage_rollups` remakes them from the ledger): read-only.
    The usage dashboard (/admin/usage/) is their readable view."""

    list_display = ("day", "owner", "function", "model_id", "calls", "failed_calls", "prompt_tokens",
                    "completion_tokens", "cost", "unmetered_calls", "uncosted_calls")
    list_filter = ("model_id",)
    search_fields = ("owner__username", "function__name", "model_id")
    list_select_related = ("owner", "function")
    date_hierarchy = "day"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: UsageDaily | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: UsageDaily | None = None) -> bool:
        return False
