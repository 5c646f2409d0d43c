from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import services
from .serializers import CatalogEntrySerializer, ModelListSerializer


class ModelListView(APIView):
    """`GET /models` (and `/api/v1/models/`): the models of every node, asked live within AI_NODE_TIMEOUT.

    Not paginated: the original contract is `{"models": [...]}`, plus `warning` when a node did not answer (its
    models then come from the last known catalogue, marked unavailable).
    """

    @extend_schema(summary="The models the AI nodes serve, asked live", responses=ModelListSerializer)
    def get(self, request: Request) -> Response:
        answer = services.sync_catalogue(timeout_ms=settings.AI_NODE_TIMEOUT)
        body: dict = {"models": CatalogEntrySerializer(answer.models, many=True).data}
        if answer.warning:
            body["warning"] = answer.warning
        return Response(body)
