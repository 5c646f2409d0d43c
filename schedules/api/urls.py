from rest_framework.routers import DefaultRouter

from .views import ScheduleViewSet

router = DefaultRouter()
router.trailing_slash = "/?"  # as jobs.api.urls: both /schedules/ID and /schedules/ID/
router.register("schedules", ScheduleViewSet, basename="schedule")

urlpatterns = router.urls
