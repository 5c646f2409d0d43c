from django.urls import path, re_path

from .views import JobsCsvView, UsageView

urlpatterns = [
    # With or without the trailing slash, like the routers' routes (APPEND_SLASH is off).
    re_path(r"^usage/?$", UsageView.as_view(), name="usage"),
    path("usage/jobs.csv", JobsCsvView.as_view(), name="usage-jobs-csv"),
]
