"""The operator's pages, mounted under /admin/usage/ (before the admin's own routes)."""
from django.contrib import admin
from django.urls import path

from . import views

app_name = "billing"

urlpatterns = [
    path("", admin.site.admin_view(views.dashboard), name="dashboard"),
]
