from django.urls import re_path
from rest_framework.routers import DefaultRouter

from .views import BudgetViewSet, CallbackSecretView, DeliveryViewSet, WebhookEndpointViewSet

router = DefaultRouter()
router.trailing_slash = "/?"  # as jobs.api.urls: both /webhooks/ID and /webhooks/ID/
router.register("webhooks", WebhookEndpointViewSet, basename="webhook")
router.register("deliveries", DeliveryViewSet, basename="delivery")
router.register("budgets", BudgetViewSet, basename="budget")

urlpatterns = [
    # Before the router's routes, where "callback-secret" would be taken for an endpoint's id.
    re_path(r"^webhooks/callback-secret/?$", CallbackSecretView.as_view(), name="callback-secret"),
    *router.urls,
]
