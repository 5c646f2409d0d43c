from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from core.docs import RedocView, SwaggerView
from jobs.api.views import FunctionViewSet, RunView, StatusView
from models_catalog.api.views import ModelListView

urlpatterns = [
    # The operator's usage dashboard and export (billing), before the admin's own catch-all routes.
    path("admin/usage/", include("billing.urls")),
    path("admin/usage/", include("jobs.urls")),
    path("admin/", admin.site.urls),
    # The OpenAPI schema, and its docs pages (their files come from drf-spectacular-sidecar, served here).
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", RedocView.as_view(url_name="schema"), name="redoc"),
    path("api/v1/", include("jobs.api.urls")),
    path("api/v1/", include("billing.api.urls")),
    path("api/v1/", include("models_catalog.api.urls")),
    path("api/v1/", include("outbound.api.urls")),
    path("api/v1/", include("schedules.api.urls")),
    # The original platform's routes, kept for its clients.
    path("run", RunView.as_view(), name="run"),
    path("status/<str:job_id>", StatusView.as_view(), name="status"),
    path("deploy", FunctionViewSet.as_view({"post": "create"}), name="deploy"),
    path("models", ModelListView.as_view(), name="models"),
]

handler400 = "core.api.bad_request"
handler404 = "core.api.not_found"
handler500 = "core.api.server_error"
