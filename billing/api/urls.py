from django.urls import re_path

from .views import ReceiptKeysView, UsageView

urlpatterns = [
    # With or without the trailing slash, like the routers' routes (APPEND_SLASH is off).
    re_path(r"^usage/?$", UsageView.as_view(), name="usage"),
    re_path(r"^receipts/keys/?$", ReceiptKeysView.as_view(), name="receipt-keys"),
]
