from django.contrib import admin
from django.urls import include, path

from jobs.api.views import FunctionViewSet, RunView, StatusView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("jobs.api.urls")),
    # The original platform's routes, kept for its clients.
    path("run", RunView.as_view(), name="run"),
    path("status/<str:job_id>", StatusView.as_view(), name="status"),
    path("deploy", FunctionViewSet.as_view({"post": "create"}), name="deploy"),
]

handler404 = "infra_ainode.api.not_found"
handler500 = "infra_ainode.api.server_error"
