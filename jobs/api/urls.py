from django.urls import path, re_path
from rest_framework.routers import DefaultRouter

from .receipts import DayCheckpointView, JobReceiptsView, ReceiptsView
from .views import FunctionViewSet, JobEventsView, JobsCsvView, JobViewSet

router = DefaultRouter()
# DRF reads its `trailing_slash` argument as a flag ("/?" became a required "/"); set the pattern itself so that
# both /api/v1/jobs/ID and /api/v1/jobs/ID/ answer (APPEND_SLASH is off: an API client cannot follow a redirect
# of a POST).
router.trailing_slash = "/?"
router.register("functions", FunctionViewSet, basename="function")
router.register("jobs", JobViewSet, basename="job")

urlpatterns = [
    *router.urls,
    re_path(r"^jobs/(?P<pk>[^/.]+)/events/?$", JobEventsView.as_view(), name="job-events"),
    re_path(r"^jobs/(?P<pk>[^/.]+)/receipts/?$", JobReceiptsView.as_view(), name="job-receipts"),
    re_path(r"^receipts/?$", ReceiptsView.as_view(), name="receipts"),
    re_path(r"^receipts/days/(?P<day>[^/]+)/?$", DayCheckpointView.as_view(), name="receipt-day"),
    path("usage/jobs.csv", JobsCsvView.as_view(), name="usage-jobs-csv"),
]
