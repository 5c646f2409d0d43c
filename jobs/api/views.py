from django.conf import settings
from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.ranges import range_from_query

from .. import services
from ..events.feed import event_stream_response, open_feed
from ..events.store import event_store
from ..export import csv_download, jobs_in_range
from ..models import Function, Job, JobStatus
from ..results import execution_result, wait_for_job
from .serializers import FunctionSerializer, JobSerializer, RunSerializer


class FunctionViewSet(viewsets.ModelViewSet):
    serializer_class = FunctionSerializer
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    def get_queryset(self) -> QuerySet[Function]:
        return Function.objects.filter(owner=self.request.user, deleted_at__isnull=True)

    def get_object(self) -> Function:
        return services.get_function(owner=self.request.user, function_id=self.kwargs["pk"])

    def create(self, request: Request, *args, **kwargs) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload = serializer.code_upload()
        if upload is None:
            raise ValidationError({"code": ["Give the code as `code`, `codeBase64` or a `file` upload."]})
        code, filename = upload
        function = services.deploy_function(
            owner=request.user, name=serializer.validated_data["name"], code=code, filename=filename,
            **serializer.service_fields(),
        )
        return Response(self.get_serializer(function).data, status=status.HTTP_201_CREATED)

    def update(self, request: Request, *args, **kwargs) -> Response:
        function = self.get_object()
        serializer = self.get_serializer(function, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        code, filename = serializer.code_upload() or (None, "main.py")
        fields = serializer.service_fields()
        function = services.update_function(
            function=function, code=code, filename=filename,
            clear_token_budget="token_budget" in fields and fields["token_budget"] is None, **fields,
        )
        return Response(self.get_serializer(function).data)

    def destroy(self, request: Request, *args, **kwargs) -> Response:
        services.delete_function(function=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class JobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = JobSerializer

    def get_queryset(self) -> QuerySet[Job]:
        jobs = Job.objects.filter(owner=self.request.user).select_related("function_version")
        params = self.request.query_params
        if "status" in params:
            if params["status"] not in JobStatus.values:
                raise ValidationError({"status": [f"One of {', '.join(JobStatus.values)}."]})
            jobs = jobs.filter(status=params["status"])
        if "function" in params:
            jobs = jobs.filter(function=services.get_function(owner=self.request.user,
                                                              function_id=params["function"]))
        if "model" in params:
            jobs = jobs.filter(model_id=params["model"])
        return jobs

    def get_object(self) -> Job:
        return services.get_job(owner=self.request.user, job_id=self.kwargs["pk"])

    def create(self, request: Request) -> Response:
        return run(request)

    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        job = services.cancel_job(job=self.get_object())
        return Response(execution_result(job))


def run(request: Request) -> Response:
    """Submit a job; answer at once with x-async: true, else wait (bounded) for its result."""
    serializer = RunSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    function = services.get_function(owner=request.user, function_id=data["functionId"])
    job = services.submit_job(owner=request.user, function=function, model_id=data.get("modelId"),
                              input_data=data.get("inputData"), token_budget=data.get("tokenBudget"))
    if request.headers.get("x-async", "").lower() != "true":
        job = wait_for_job(job.pk, settings.RUN_SYNC_TIMEOUT)
        if job.is_terminal:
            return Response(execution_result(job))
    return Response(
        {"status": "ACCEPTED", "jobId": str(job.pk), "jobStatus": job.status, "statusUrl": f"/status/{job.pk}"},
        status=status.HTTP_202_ACCEPTED,
    )


class RunView(APIView):
    def post(self, request: Request) -> Response:
        return run(request)


class StatusView(APIView):
    def get(self, request: Request, job_id: str) -> Response:
        return Response(execution_result(services.get_job(owner=request.user, job_id=job_id)))


class JobsCsvView(APIView):
    """The caller's own jobs created in `from`..`to`, with tokens and cost, as CSV."""

    def perform_content_negotiation(self, request: Request, force: bool = False):
        # The answer is CSV whatever the client accepts; errors (bad dates) still answer in the JSON error shape.
        return super().perform_content_negotiation(request, force=True)

    def get(self, request: Request) -> StreamingHttpResponse:
        span = range_from_query(request.query_params)
        return csv_download(jobs_in_range(span, owner=request.user), span)


class JobEventsView(APIView):
    """The job's live events as Server-Sent Events (see jobs.events), from `Last-Event-ID` (header, or the
    `lastEventId` query parameter) to its `result` event. Only the owner's jobs; 404 for the rest."""

    def perform_content_negotiation(self, request: Request, force: bool = False):
        # The answer is an event stream whatever the client accepts; errors still answer in the JSON error shape.
        return super().perform_content_negotiation(request, force=True)

    def get(self, request: Request, pk: str) -> StreamingHttpResponse:
        job = services.get_job(owner=request.user, job_id=pk)
        after = request.headers.get("Last-Event-ID") or request.query_params.get("lastEventId") or None
        return event_stream_response(open_feed(job, store=event_store(), last_event_id=after))
