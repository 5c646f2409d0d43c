from django.urls import re_path

from .views import UsageView

urlpatterns = [
    # With or without the trailing slash, like the routers' routes (APPEND_SLASH is off).
    re_path(r"^usage/?$", UsageView.as_view(), name="usage"),
]
