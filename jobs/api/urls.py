from django.urls import path, re_path
from rest_framework.routers import DefaultRouter

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
    path("usage/jobs.csv", JobsCsvView.as_view(), name="usage-jobs-csv"),
]
