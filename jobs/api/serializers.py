import base64
import binascii
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.errors import TooLarge

from ..models import Function, FunctionVersion, Job, JobStatus, Runtime
from ..requirements import MAX_TEXT_BYTES
from ..services import MAX_TOKEN_BUDGET
from ..results import execution_result


class DependenciesSerializer(serializers.Serializer):
    """A version's dependencies and the state of their layer's build (documentation of `dependencies_of`)."""

    status = serializers.ChoiceField(choices=["building", "ready", "failed", "removed"])
    requirements = serializers.CharField(help_text="The requirements, normalised.")
    layer = serializers.CharField(allow_null=True, help_text="The layer's content address (shared by every "
                                                             "function asking for the same set).")
    errorCode = serializers.CharField(allow_blank=True)
    log = serializers.CharField(allow_blank=True, help_text="The build's output (its end, capped).")
    packages = serializers.DictField(child=serializers.CharField(), help_text="Installed packages and versions.")
    sizeBytes = serializers.IntegerField(allow_null=True)
    buildSeconds = serializers.FloatField(allow_null=True)


def dependencies_of(version: FunctionVersion) -> dict[str, Any] | None:
    """A version's dependencies as the API shows them; None when it has none."""
    if not version.requirements:
        return None
    layer = version.layer
    return {
        "status": version.dependency_status,
        "requirements": version.requirements,
        "layer": layer.key if layer else None,
        "errorCode": layer.error_code if layer else "",
        "log": layer.log if layer and layer.status == "failed" else "",
        "packages": layer.packages if layer else {},
        "sizeBytes": layer.size_bytes if layer else None,
        "buildSeconds": layer.build_seconds if layer else None,
    }


class FunctionSerializer(serializers.ModelSerializer):
    """A function as users see it. Code comes in as `code` (text of main.py, or of index.js with `runtime` node),
    `codeBase64` (a zip or one file) or a multipart `file`; it never goes out."""

    functionId = serializers.UUIDField(source="id", read_only=True)
    memoryMb = serializers.IntegerField(source="memory_mb", required=False, min_value=1)
    timeoutSeconds = serializers.IntegerField(source="timeout_seconds", required=False, min_value=1)
    defaultModel = serializers.CharField(source="default_model", required=False, allow_blank=True, max_length=200)
    allowedModels = serializers.ListField(source="allowed_models", child=serializers.CharField(max_length=200),
                                          required=False, max_length=50)
    tokenBudget = serializers.IntegerField(source="token_budget", required=False, allow_null=True, min_value=1,
                                           max_value=MAX_TOKEN_BUDGET)
    env = serializers.DictField(child=serializers.CharField(allow_blank=True, max_length=4096), required=False)
    code = serializers.CharField(write_only=True, required=False, trim_whitespace=False)
    runtime = serializers.ChoiceField(
        choices=Runtime.choices, required=False,
        help_text="The current version's runtime. Given with code: `python` (main.py) or `node` (index.js or "
                  "main.js); without it, a new function's runtime is its upload's (node for a zip with index.js or "
                  "main.js and no main.py, or a .js file), and an update keeps the current one.")
    requirements = serializers.CharField(
        write_only=True, required=False, allow_blank=True, trim_whitespace=False, max_length=MAX_TEXT_BYTES,
        help_text="The text of a requirements.txt (else the zip's own requirements.txt is used). Only "
                  "`name[extras] op version ; markers` lines; an empty text removes the dependencies. A node "
                  "function's dependencies are its zip's package.json and package-lock.json; only an empty text "
                  "is accepted for it.")
    dependencies = serializers.SerializerMethodField()
    # Strict base64 (what b64decode(validate=True) takes), so that the schema says what the server accepts.
    codeBase64 = serializers.RegexField(r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
                                        write_only=True, required=False,
                                        error_messages={"invalid": "Not valid base64."})
    file = serializers.FileField(write_only=True, required=False)
    files = serializers.SerializerMethodField()
    sha256 = serializers.SerializerMethodField()
    createdAt = serializers.DateTimeField(source="created_at", read_only=True)
    updatedAt = serializers.DateTimeField(source="updated_at", read_only=True)

    class Meta:
        model = Function
        fields = ["functionId", "name", "version", "memoryMb", "timeoutSeconds", "env", "defaultModel", "allowedModels", "tokenBudget", "code",
                  "runtime", "codeBase64", "file", "requirements", "files", "sha256", "dependencies", "createdAt", "updatedAt"]
        read_only_fields = ["version"]

    def get_files(self, function: Function) -> list[str]:
        return function.current_version.files

    def get_sha256(self, function: Function) -> str:
        return function.current_version.sha256

    @extend_schema_field(DependenciesSerializer(allow_null=True))
    def get_dependencies(self, function: Function) -> dict[str, Any] | None:
        return dependencies_of(function.current_version)

    def code_upload(self) -> tuple[bytes, str] | None:
        """The uploaded code as (bytes, file name), or None when this request carries none."""
        data = self.validated_data
        if "file" in data:
            upload = data["file"]
            # A multipart file is spooled to disk, not read into memory by Django: refuse a large one unread.
            if upload.size is not None and upload.size > settings.FUNCTION_MAX_CODE_BYTES:
                raise TooLarge(f"Code is larger than {settings.FUNCTION_MAX_CODE_BYTES} bytes.", code="code_too_large")
            return upload.read(), upload.name or "main.py"
        if "codeBase64" in data:
            try:
                return base64.b64decode(data["codeBase64"], validate=True), "upload"
            except (binascii.Error, ValueError):
                raise serializers.ValidationError({"codeBase64": ["Not valid base64."]}) from None
        if "code" in data:
            return data["code"].encode(), "main.py"
        return None

    def service_fields(self) -> dict[str, Any]:
        names = ("memory_mb", "timeout_seconds", "env", "default_model", "allowed_models", "token_budget",
                 "requirements", "runtime")
        return {name: self.validated_data[name] for name in names if name in self.validated_data}


class FunctionJsonSerializer(FunctionSerializer):
    """A function as a JSON body gives it (documentation only): code as `code` or `codeBase64`, never a file."""

    file = None

    class Meta(FunctionSerializer.Meta):
        fields = [name for name in FunctionSerializer.Meta.fields if name != "file"]


class RunSerializer(serializers.Serializer):
    functionId = serializers.CharField(max_length=100)
    modelId = serializers.CharField(required=False, allow_blank=True, allow_null=True, max_length=10_000)
    inputData = serializers.JSONField(required=False, allow_null=True)
    tokenBudget = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=MAX_TOKEN_BUDGET)
    callbackUrl = serializers.URLField(required=False, allow_null=True, max_length=2000,
                                       help_text="Where the job's end is sent (signed with your callback secret), "
                                                 "besides your webhooks.")


class JobSerializer(serializers.ModelSerializer):
    class Meta:
        model = Job
        fields = ["id"]

    def to_representation(self, job: Job) -> dict[str, Any]:
        return execution_result(job)


class ExecutionResultSerializer(serializers.Serializer):
    """A job's state or result (jobs.results.execution_result): the original platform's names, and ours. Read
    only; it documents the shape that `execution_result` builds."""

    requestId = serializers.UUIDField(help_text="The job's id (the original platform's name).")
    jobId = serializers.UUIDField()
    functionId = serializers.UUIDField()
    functionVersion = serializers.IntegerField()
    modelId = serializers.CharField()
    node = serializers.CharField(allow_blank=True)
    workerId = serializers.CharField(allow_blank=True)
    status = serializers.ChoiceField(choices=JobStatus.choices)
    errorCode = serializers.CharField(allow_blank=True, help_text="Why a job failed; empty when it did not.")
    errorMessage = serializers.CharField(allow_blank=True)
    exitCode = serializers.IntegerField(allow_null=True)
    stdout = serializers.CharField(allow_blank=True)
    stderr = serializers.CharField(allow_blank=True)
    stdoutTruncated = serializers.BooleanField()
    stderrTruncated = serializers.BooleanField()
    result = serializers.JSONField(allow_null=True, help_text="What the handler returned (JSON).")
    durationMs = serializers.IntegerField(allow_null=True)
    peakMemoryBytes = serializers.IntegerField(allow_null=True)
    llm_token_count = serializers.IntegerField(help_text="promptTokens + completionTokens.")
    promptTokens = serializers.IntegerField()
    completionTokens = serializers.IntegerField()
    llmCalls = serializers.IntegerField()
    unmeteredCalls = serializers.IntegerField(help_text="Calls whose tokens nothing could count (nothing reached the "
                                                        "script).")
    estimatedCalls = serializers.IntegerField(help_text="Calls whose counts we estimated because the node did not "
                                                        "report them (billed all the same).")
    cost = serializers.DecimalField(max_digits=24, decimal_places=10, coerce_to_string=True,
                                    help_text="The sum of the calls' known costs, as a decimal string.")
    uncostedCalls = serializers.IntegerField()
    currency = serializers.CharField()
    tokenBudget = serializers.IntegerField(allow_null=True)
    createdAt = serializers.DateTimeField()
    startedAt = serializers.DateTimeField(allow_null=True)
    finishedAt = serializers.DateTimeField(allow_null=True)
    receiptHash = serializers.CharField(allow_blank=True, help_text="The hash of the job receipt that closed the "
                                                                     "job's receipts when it ended; empty until then.")


class AcceptedSerializer(serializers.Serializer):
    """The answer of an asynchronous run (x-async: true), or of a synchronous one whose wait ended first."""

    status = serializers.ChoiceField(choices=["ACCEPTED"])
    jobId = serializers.UUIDField()
    jobStatus = serializers.ChoiceField(choices=JobStatus.choices)
    statusUrl = serializers.CharField(help_text="Where to ask for the job's state: /status/{jobId}.")
