from django.contrib import admin, messages
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest

from . import services
from .models import Budget, DeliveryAttempt, Event, ThresholdCrossing, WebhookEndpoint


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    """Endpoints of users. A new one gets its secret from the service; the secret itself is never shown here."""

    list_display = ("url", "owner", "active", "created_at")
    list_filter = ("active",)
    search_fields = ("url", "owner__username")
    fields = ("owner", "url", "description", "event_types", "active", "previous_until", "created_at")
    readonly_fields = ("previous_until", "created_at")
    actions = ["rotate_secrets"]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    def save_model(self, request: HttpRequest, obj: WebhookEndpoint, form, change: bool) -> None:
        if change:
            services.update_endpoint(endpoint=obj, url=obj.url, event_types=obj.event_types,
                                     description=obj.description, active=obj.active)
            return
        made = services.create_endpoint(owner=obj.owner, url=obj.url, event_types=obj.event_types,
                                        description=obj.description)
        obj.pk = made.pk
        messages.info(request, f"The endpoint's secret, shown once: {made.secret}")

    @admin.action(description="Rotate the secrets (the old ones sign beside the new for the overlap)")
    def rotate_secrets(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset:
            services.rotate_secret(endpoint)
            messages.info(request, f"{endpoint.url}: new secret, shown once: {endpoint.secret}")


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    extra = 0
    can_delete = False
    fields = ("started_at", "duration_ms", "status_code", "succeeded", "error", "response_body")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return False


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    """The outbox and its delivery log: read-only, with a redelivery for dead (or delivered) events."""

    list_display = ("id", "event_type", "destination", "owner", "status", "attempts", "last_status_code",
                    "created_at")
    list_filter = ("status", "destination", "event_type")
    search_fields = ("event_id", "owner__username", "url")
    list_select_related = ("owner",)
    inlines = [DeliveryAttemptInline]
    actions = ["redeliver"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return False

    @admin.action(description="Deliver again (same event id, all retries)")
    def redeliver(self, request: HttpRequest, queryset: QuerySet[Event]) -> None:
        for event in queryset:
            services.redeliver(event=event)
        messages.info(request, f"{len(queryset)} event(s) will be delivered again.")


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "metric", "amount", "thresholds")
    search_fields = ("name", "owner__username")


@admin.register(ThresholdCrossing)
class ThresholdCrossingAdmin(admin.ModelAdmin):
    list_display = ("owner", "subject", "threshold", "period", "used", "limit", "created_at")
    list_filter = ("period", "threshold")
    search_fields = ("owner__username", "subject")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ThresholdCrossing | None = None) -> bool:
        return False
