from django.conf import settings
from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.ranges import range_from_query
from core.errors import DomainError
from core.schema import errors
from models_catalog.services import MODEL_ID_PATTERN, check_model_id

from .. import services
from ..events.feed import event_stream_response, open_feed
from ..events.store import event_store
from ..export import csv_download, jobs_in_range
from ..idempotency import fingerprint
from ..models import Function, Job, JobStatus
from ..results import execution_result, wait_for_job
from .serializers import (
    AcceptedSerializer,
    ExecutionResultSerializer,
    FunctionJsonSerializer,
    FunctionSerializer,
    JobSerializer,
    RunSerializer,
)

CODE_ERRORS = errors(
    *[(400, code) for code in ("invalid_code", "missing_main", "bad_zip", "too_many_files", "zip_link", "unsafe_path",
                               "not_utf8", "syntax_error", "invalid_model_id", "unknown_model", "invalid_memory",
                               "invalid_timeout", "invalid_env", "invalid_token_budget", "invalid_requirements",
                               "invalid_dependencies")],
    (413, "code_too_large"),
)
DEPLOY_EXAMPLE = OpenApiExample(
    "A handler", request_only=True, media_type="application/json",
    value={"name": "echo", "code": "def handler(event, context):\n    return {'echo': event}\n", "memoryMb": 128,
           "timeoutSeconds": 30},
)
RUN_EXAMPLE = OpenApiExample(
    "A run", request_only=True,
    value={"functionId": "9f0c2b1e-5d4a-4c3b-8e7f-1a2b3c4d5e6f", "modelId": "smollm2:135m",
           "inputData": {"question": "What is 2+2?"}, "tokenBudget": 200},
)
# Code comes as a multipart `file` upload, or in JSON as `code` / `codeBase64` (JSON has no files).
FUNCTION_REQUEST = {"application/json": FunctionJsonSerializer, "multipart/form-data": FunctionSerializer}
# PUT changes what it is given, like PATCH (new code makes a new version; settings not given stay).
FUNCTION_CHANGE = {"application/json": FunctionJsonSerializer(partial=True),
                   "multipart/form-data": FunctionSerializer(partial=True)}
FUNCTION_NOT_FOUND = errors((404, "function_not_found"))
JOB_NOT_FOUND = errors((404, "job_not_found"))
RUN_ERRORS = errors((400, "invalid_input"), (400, "invalid_x_async"), (400, "invalid_model_id"), (400, "unknown_model"),
                    (400, "invalid_token_budget"), (400, "invalid_idempotency_key"), (400, "invalid_url"),
                    (400, "destination_not_allowed"), (400, "no_callback_secret"), (402, "quota_exceeded"),
                    (404, "function_not_found"), (409, "dependencies_building"), (409, "dependency_build_failed"),
                    (413, "input_too_large"), (422, "idempotency_key_reused"), (429, "too_many_jobs"))
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key", {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7E]+$"},
    OpenApiParameter.HEADER,
    description="Your own unique key for this request (1-255 printable ASCII characters). Repeating it with the "
                "same body within 24 h answers what the first request made (the same job or function; nothing is "
                "made, run or billed twice), with `Idempotent-Replayed: true`; with another body, 422 "
                "`idempotency_key_reused`.",
)
X_ASYNC = OpenApiParameter(
    "x-async", {"type": "string", "pattern": "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$"}, OpenApiParameter.HEADER,
    description="`true` answers 202 at once; otherwise the call waits (at most RUN_SYNC_TIMEOUT) for the result.",
)
RUN_ANSWERS = {
    200: OpenApiResponse(ExecutionResultSerializer, description="The job ended within the wait: its result."),
    202: OpenApiResponse(AcceptedSerializer, description="Accepted: the job is queued or running."),
    **RUN_ERRORS,
}
DATE_RANGE = [
    OpenApiParameter("from", OpenApiTypes.DATE, description="First day (YYYY-MM-DD); by default 30 days before `to`."),
    OpenApiParameter("to", OpenApiTypes.DATE, description="Last day, included (YYYY-MM-DD); by default today."),
]


@extend_schema_view(
    list=extend_schema(summary="List your functions"),
    create=extend_schema(summary="Deploy a function", description="Also `POST /deploy`. Give the code as `code` "
                         "(the text of main.py), `codeBase64` (a zip holding main.py, or main.py) or a multipart "
                         "`file`.", parameters=[IDEMPOTENCY_KEY], request=FUNCTION_REQUEST,
                         examples=[DEPLOY_EXAMPLE],
                         responses={201: FunctionSerializer, **CODE_ERRORS, **errors(
                             (409, "function_exists"), (400, "invalid_idempotency_key"),
                             (422, "idempotency_key_reused"))}),
    retrieve=extend_schema(summary="Show a function", responses={200: FunctionSerializer, **FUNCTION_NOT_FOUND}),
    update=extend_schema(summary="Change a function", description="As PATCH: new code makes a new version, and "
                         "settings not given stay.", request=FUNCTION_CHANGE,
                         responses={200: FunctionSerializer, **CODE_ERRORS, **FUNCTION_NOT_FOUND}),
    partial_update=extend_schema(summary="Change some of a function's settings", request=FUNCTION_REQUEST,
                                 responses={200: FunctionSerializer, **CODE_ERRORS, **FUNCTION_NOT_FOUND}),
    destroy=extend_schema(summary="Delete a function", description="Its jobs stay, for the bill.",
                          responses={204: None, **FUNCTION_NOT_FOUND}),
)
class FunctionViewSet(viewsets.ModelViewSet):
    serializer_class = FunctionSerializer
    parser_classes = [JSONParser, MultiPartParser]

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
        function, replayed = services.deploy_function_once(
            owner=request.user, idempotency_key=idempotency_key(request), body_fingerprint=fingerprint(request.data),
            name=serializer.validated_data["name"], code=code, filename=filename, **serializer.service_fields(),
        )
        return Response(self.get_serializer(function).data, status=status.HTTP_201_CREATED,
                        headers=replay_headers(replayed))

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


@extend_schema_view(
    list=extend_schema(summary="List your jobs, newest first", responses={200: ExecutionResultSerializer(many=True),
                                                                          **FUNCTION_NOT_FOUND},
                       parameters=[
                           OpenApiParameter("status", OpenApiTypes.STR, enum=JobStatus.values),
                           OpenApiParameter("function", OpenApiTypes.UUID, description="A function's id."),
                           OpenApiParameter("model", {"type": "string", "pattern": MODEL_ID_PATTERN.pattern},
                                            description="A modelId (400 `invalid_model_id` for one that cannot "
                                                        "be)."),
                       ]),
    retrieve=extend_schema(summary="Show a job", description="Also `GET /status/{jobId}`.",
                           responses={200: ExecutionResultSerializer, **JOB_NOT_FOUND}),
    create=extend_schema(summary="Run a function", description="Also `POST /run`.", request=RunSerializer,
                         examples=[RUN_EXAMPLE],
                         parameters=[X_ASYNC, IDEMPOTENCY_KEY], responses=RUN_ANSWERS),
    cancel=extend_schema(summary="Cancel a queued or running job", request=None, operation_id="jobs_cancel",
                         responses={200: ExecutionResultSerializer, **JOB_NOT_FOUND,
                                    **errors((409, "job_finished"))}),
)
class JobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = JobSerializer
    parser_classes = [JSONParser]  # a run's inputData is JSON

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
            jobs = jobs.filter(model_id=check_model_id(params["model"]))
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
    wait = settings.RUN_SYNC_TIMEOUT
    if not asynchronous(request):
        # Dependencies still being built count against the synchronous wait; past it, the run is refused
        # (`dependencies_building`) before any job is made.
        wait -= services.wait_for_dependencies(function=function, timeout=wait)
    job, replayed = services.submit_job_once(
        owner=request.user, idempotency_key=idempotency_key(request), body_fingerprint=fingerprint(request.data),
        function=function, model_id=data.get("modelId"), input_data=data.get("inputData"),
        token_budget=data.get("tokenBudget"), callback_url=data.get("callbackUrl"),
        api_key_id=getattr(request.auth, "pk", None), interactive=not asynchronous(request),
    )
    if not asynchronous(request):
        job = wait_for_job(job.pk, max(wait, 0.0))
        if job.is_terminal:
            return Response(execution_result(job), headers=replay_headers(replayed))
    return Response(
        {"status": "ACCEPTED", "jobId": str(job.pk), "jobStatus": job.status, "statusUrl": f"/status/{job.pk}"},
        status=status.HTTP_202_ACCEPTED, headers=replay_headers(replayed),
    )


def asynchronous(request: Request) -> bool:
    """The x-async header: true or false (any case); absent is false. Raises DomainError `invalid_x_async`."""
    value = request.headers.get("x-async", "false").lower()
    if value not in ("true", "false"):
        raise DomainError("x-async must be true or false.", code="invalid_x_async")
    return value == "true"


def idempotency_key(request: Request) -> str | None:
    return request.headers.get("Idempotency-Key")


def replay_headers(replayed: bool) -> dict[str, str]:
    """A repeated request (same Idempotency-Key and body) is answered with what the first one made, and says so."""
    return {"Idempotent-Replayed": "true"} if replayed else {}


class RunView(APIView):
    parser_classes = [JSONParser]
    @extend_schema(summary="Run a function (the original platform's route)",
                   request=RunSerializer, parameters=[X_ASYNC, IDEMPOTENCY_KEY], responses=RUN_ANSWERS,
                   examples=[RUN_EXAMPLE])
    def post(self, request: Request) -> Response:
        return run(request)


class StatusView(APIView):
    @extend_schema(summary="A job's state or result (the original platform's route)",
                   parameters=[OpenApiParameter("job_id", OpenApiTypes.STR, OpenApiParameter.PATH)],
                   responses={200: ExecutionResultSerializer, **JOB_NOT_FOUND})
    def get(self, request: Request, job_id: str) -> Response:
        return Response(execution_result(services.get_job(owner=request.user, job_id=job_id)))


class JobsCsvView(APIView):
    """The caller's own jobs created in `from`..`to`, with tokens and cost, as CSV."""

    def perform_content_negotiation(self, request: Request, force: bool = False):
        # The answer is CSV whatever the client accepts; errors (bad dates) still answer in the JSON error shape.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(summary="Your jobs as CSV", parameters=DATE_RANGE,
                   responses={(200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="One line per job."),
                              **errors((400, "invalid_date"), (400, "invalid_range"))})
    def get(self, request: Request) -> StreamingHttpResponse:
        span = range_from_query(request.query_params, blank_is_absent=False)
        return csv_download(jobs_in_range(span, owner=request.user), span)


@extend_schema(
    summary="Follow a job's live events", tags=["jobs"],
    description="Server-Sent Events: `status`, `stdout`, `stderr`, `llm_call`, `usage`, then `result` (the body of "
                "`GET /status/{id}`), after which the stream ends. Resume with the `Last-Event-ID` header or the "
                "`lastEventId` parameter; keep-alive comments every `JOB_EVENTS_KEEPALIVE_SECONDS`.",
    parameters=[
        OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="The job's id."),
        OpenApiParameter("lastEventId", OpenApiTypes.STR, description="Resume after this event id."),
        OpenApiParameter("Last-Event-ID", OpenApiTypes.STR, OpenApiParameter.HEADER,
                         description="Resume after this event id (what EventSource sends when it reconnects)."),
    ],
    responses={(200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR, description="The event stream."),
               **JOB_NOT_FOUND, **errors((400, "invalid_last_event_id"), (503, "too_many_listeners"))},
)
class JobEventsView(APIView):
    """The job's live events as Server-Sent Events (see jobs.events), from `Last-Event-ID` (header, or the
    `lastEventId` query parameter) to its `result` event. Only the owner's jobs; 404 for the rest."""

    def perform_content_negotiation(self, request: Request, force: bool = False):
        # The answer is an event stream whatever the client accepts; errors still answer in the JSON error shape.
        return super().perform_content_negotiation(request, force=True)

    def get(self, request: Request, pk: str) -> StreamingHttpResponse:
        job = services.get_job(owner=request.user, job_id=pk)
        after = request.headers.get("Last-Event-ID") or request.query_params.get("lastEventId") or None
        return event_stream_response(open_feed(job, store=event_store(), last_event_id=after, user=request.user.pk))
