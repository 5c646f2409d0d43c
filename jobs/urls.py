"""The operator's jobs export and fair-share page, mounted under /admin/usage/ beside the dashboard (before the
admin's own routes)."""
from django.contrib import admin
from django.urls import path

from . import views

app_name = "jobs"

urlpatterns = [
    path("jobs.csv", admin.site.admin_view(views.jobs_csv), name="jobs-csv"),
    path("fair-share/", admin.site.admin_view(views.fair_share), name="fair-share"),
]
