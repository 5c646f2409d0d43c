from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.schema import errors

from .. import services
from ..models import Budget, Event, EventStatus, WebhookEndpoint
from .serializers import (BudgetSerializer, CallbackSecretSerializer, DeliverySerializer, WebhookEndpointSerializer,
                          WebhookSecretSerializer)

URL_ERRORS = errors((400, "invalid_url"), (400, "destination_not_allowed"), (400, "invalid_event_type"))
WEBHOOK_NOT_FOUND = errors((404, "webhook_not_found"))
DELIVERY_NOT_FOUND = errors((404, "delivery_not_found"))


@extend_schema_view(
    list=extend_schema(summary="List your webhook endpoints"),
    create=extend_schema(summary="Register a webhook endpoint", description="The answer shows the endpoint's "
                         "signing secret, once.", responses={201: WebhookSecretSerializer, **URL_ERRORS}),
    retrieve=extend_schema(summary="Show a webhook endpoint", responses={200: WebhookEndpointSerializer,
                                                                         **WEBHOOK_NOT_FOUND}),
    update=extend_schema(summary="Change a webhook endpoint",
                         responses={200: WebhookEndpointSerializer, **URL_ERRORS, **WEBHOOK_NOT_FOUND}),
    partial_update=extend_schema(summary="Change some of a webhook endpoint's settings",
                                 responses={200: WebhookEndpointSerializer, **URL_ERRORS, **WEBHOOK_NOT_FOUND}),
    destroy=extend_schema(summary="Delete a webhook endpoint", description="Its pending deliveries go with it.",
                          responses={204: None, **WEBHOOK_NOT_FOUND}),
    rotate_secret=extend_schema(summary="Rotate a webhook endpoint's secret", request=None,
                                description="The new secret is shown once; the old one still signs beside it "
                                            "until `previousSecretValidUntil`.",
                                responses={200: WebhookSecretSerializer, **WEBHOOK_NOT_FOUND}),
)
class WebhookEndpointViewSet(viewsets.ModelViewSet):
    serializer_class = WebhookEndpointSerializer
    parser_classes = [JSONParser]

    def get_queryset(self) -> QuerySet[WebhookEndpoint]:
        return WebhookEndpoint.objects.filter(owner=self.request.user)

    def get_object(self) -> WebhookEndpoint:
        return services.get_endpoint(owner=self.request.user, endpoint_id=self.kwargs["pk"])

    def create(self, request: Request, *args, **kwargs) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        endpoint = services.create_endpoint(owner=request.user, url=data["url"], event_types=data["event_types"],
                                            description=data.get("description", ""))
        return Response(WebhookSecretSerializer(endpoint).data, status=status.HTTP_201_CREATED)

    def update(self, request: Request, *args, **kwargs) -> Response:
        endpoint = self.get_object()
        serializer = self.get_serializer(endpoint, data=request.data, partial=kwargs.get("partial", False))
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        endpoint = services.update_endpoint(endpoint=endpoint, url=data.get("url"),
                                            event_types=data.get("event_types"),
                                            description=data.get("description"), active=data.get("active"))
        return Response(self.get_serializer(endpoint).data)

    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request: Request, pk: str) -> Response:
        return Response(WebhookSecretSerializer(services.rotate_secret(self.get_object())).data)


class CallbackSecretView(APIView):
    parser_classes = [JSONParser]

    @extend_schema(summary="Make or rotate your callback secret", request=None,
                   description="The secret that signs the callbacks of your runs (`callbackUrl`), shown once. The "
                               "first call makes it; later calls rotate it, the old one still signing beside the new "
                               "until `previousSecretValidUntil`.",
                   responses={200: CallbackSecretSerializer})
    def post(self, request: Request) -> Response:
        return Response(CallbackSecretSerializer(services.rotate_callback_secret(owner=request.user)).data)


@extend_schema_view(
    list=extend_schema(summary="List your deliveries, newest first", parameters=[
        OpenApiParameter("status", str, enum=EventStatus.values),
        OpenApiParameter("endpoint", str, description="A webhook endpoint's id.")]),
    retrieve=extend_schema(summary="Show a delivery and its attempts",
                           responses={200: DeliverySerializer, **DELIVERY_NOT_FOUND}),
    redeliver=extend_schema(summary="Deliver an event again", request=None,
                            description="With the same event id and all its retries, whatever became of it.",
                            responses={200: DeliverySerializer, **DELIVERY_NOT_FOUND}),
)
class DeliveryViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = DeliverySerializer

    def get_queryset(self) -> QuerySet[Event]:
        events = Event.objects.filter(owner=self.request.user).prefetch_related("delivery_attempts")
        params = self.request.query_params
        if "status" in params:
            if params["status"] not in EventStatus.values:
                raise ValidationError({"status": [f"One of {', '.join(EventStatus.values)}."]})
            events = events.filter(status=params["status"])
        if "endpoint" in params:
            events = events.filter(endpoint=services.get_endpoint(owner=self.request.user,
                                                                  endpoint_id=params["endpoint"]))
        return events

    def get_object(self) -> Event:
        return services.get_event(owner=self.request.user, event_pk=self.kwargs["pk"])

    @action(detail=True, methods=["post"])
    def redeliver(self, request: Request, pk: str) -> Response:
        return Response(self.get_serializer(services.redeliver(event=self.get_object())).data)


@extend_schema_view(
    list=extend_schema(summary="List your alert budgets"),
    create=extend_schema(summary="Add an alert budget", description="`budget.threshold` fires once a month as your "
                         "spending passes each threshold; nothing is refused."),
    retrieve=extend_schema(summary="Show an alert budget"),
    update=extend_schema(summary="Change an alert budget"),
    partial_update=extend_schema(summary="Change some of an alert budget"),
    destroy=extend_schema(summary="Delete an alert budget"),
)
class BudgetViewSet(viewsets.ModelViewSet):
    serializer_class = BudgetSerializer
    parser_classes = [JSONParser]

    def get_queryset(self) -> QuerySet[Budget]:
        return Budget.objects.filter(owner=self.request.user).select_related("api_key")

    def perform_create(self, serializer: BudgetSerializer) -> None:
        self.perform_update(serializer, owner=self.request.user)

    def perform_update(self, serializer: BudgetSerializer, **fields) -> None:
        if "thisKeyOnly" in self.request.data:
            fields["api_key"] = self.request.auth if serializer.validated_data.get("thisKeyOnly") else None
        serializer.validated_data.pop("thisKeyOnly", None)
        serializer.save(**fields)
