from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response

from core.api import Pagination
from core.schema import errors
from jobs.services import get_function

from .. import services
from ..models import Schedule
from .serializers import ScheduleSerializer, ScheduleTickSerializer

SCHEDULE_ERRORS = errors((400, "invalid_schedule"), (400, "invalid_cron"), (404, "function_not_found"),
                         (413, "input_too_large"))
SCHEDULE_NOT_FOUND = errors((404, "schedule_not_found"))


@extend_schema_view(
    list=extend_schema(summary="List your schedules"),
    create=extend_schema(summary="Schedule a function", description="On a cron expression (five fields, UTC) or "
                         "every `intervalSeconds`; each run is an ordinary job.",
                         responses={201: ScheduleSerializer, **SCHEDULE_ERRORS}),
    retrieve=extend_schema(summary="Show a schedule", responses={200: ScheduleSerializer, **SCHEDULE_NOT_FOUND}),
    update=extend_schema(summary="Change a schedule",
                         responses={200: ScheduleSerializer, **SCHEDULE_ERRORS, **SCHEDULE_NOT_FOUND}),
    partial_update=extend_schema(summary="Change some of a schedule",
                                 responses={200: ScheduleSerializer, **SCHEDULE_ERRORS, **SCHEDULE_NOT_FOUND}),
    destroy=extend_schema(summary="Delete a schedule", description="Its jobs stay.",
                          responses={204: None, **SCHEDULE_NOT_FOUND}),
    pause=extend_schema(summary="Pause a schedule", request=None,
                        responses={200: ScheduleSerializer, **SCHEDULE_NOT_FOUND}),
    resume=extend_schema(summary="Resume a schedule", request=None, description="From its first tick after now: "
                         "what the pause skipped is not run.",
                         responses={200: ScheduleSerializer, **SCHEDULE_NOT_FOUND}),
    runs=extend_schema(summary="A schedule's ticks, newest first", description="What became of each tick: "
                       "`submitted` (with its job), `waiting`, `skipped`, `missed` or `failed`.",
                       responses={200: ScheduleTickSerializer(many=True), **SCHEDULE_NOT_FOUND}),
)
class ScheduleViewSet(viewsets.ModelViewSet):
    serializer_class = ScheduleSerializer
    parser_classes = [JSONParser]

    def get_queryset(self) -> QuerySet[Schedule]:
        return Schedule.objects.filter(owner=self.request.user)

    def get_object(self) -> Schedule:
        return services.get_schedule(owner=self.request.user, schedule_id=self.kwargs["pk"])

    def create(self, request: Request, *args, **kwargs) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        fields = dict(serializer.validated_data)
        function = get_function(owner=request.user, function_id=fields.pop("function_id"))
        schedule = services.create_schedule(owner=request.user, function=function, **fields)
        return Response(self.get_serializer(schedule).data, status=status.HTTP_201_CREATED)

    def update(self, request: Request, *args, **kwargs) -> Response:
        schedule = self.get_object()
        serializer = self.get_serializer(schedule, data=request.data, partial=kwargs.get("partial", False))
        serializer.is_valid(raise_exception=True)
        fields = dict(serializer.validated_data)
        if "function_id" in fields:
            fields["function"] = get_function(owner=request.user, function_id=fields.pop("function_id"))
        if "cron" in fields or "interval_seconds" in fields:  # one replaces the other
            fields.setdefault("cron", "")
            fields.setdefault("interval_seconds", None)
        return Response(self.get_serializer(services.update_schedule(schedule=schedule, **fields)).data)

    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str) -> Response:
        return Response(self.get_serializer(services.pause(schedule=self.get_object())).data)

    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str) -> Response:
        return Response(self.get_serializer(services.resume(schedule=self.get_object())).data)

    @action(detail=True, methods=["get"])
    def runs(self, request: Request, pk: str) -> Response:
        paginator = Pagination()
        page = paginator.paginate_queryset(self.get_object().ticks.all(), request, view=self)
        return paginator.get_paginated_response(ScheduleTickSerializer(page, many=True).data)
