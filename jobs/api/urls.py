from rest_framework.routers import DefaultRouter

from .views import FunctionViewSet, JobViewSet

router = DefaultRouter(trailing_slash="/?")
router.register("functions", FunctionViewSet, basename="function")
router.register("jobs", JobViewSet, basename="job")

urlpatterns = router.urls
