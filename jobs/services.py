"""Use cases of functions and jobs. Views, tasks, admin actions and commands all come through here."""
import json
import logging
import re
import uuid
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from core.errors import Conflict, DomainError, NotFound, TooLarge

from models_catalog.services import check_model_id, route_model

from .code_archive import build_archive
from .models import Function, FunctionVersion, Job, JobStatus

logger = logging.getLogger(__name__)

ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


# --- functions ------------------------------------------------------------------------------------------------

def deploy_function(*, owner: User, name: str, code: bytes, filename: str = "main.py",
                    memory_mb: int | None = None, timeout_seconds: int | None = None,
                    env: dict[str, str] | None = None, default_model: str = "",
                    allowed_models: list[str] | None = None, token_budget: int | None = None) -> Function:
    """Create a function with its first version. Raises DomainError on bad code or limits."""
    archive = build_archive(code, filename)
    if Function.objects.filter(owner=owner, name=name, deleted_at__isnull=True).exists():
        raise Conflict(f"You already have a function named {name!r}.", code="function_exists")
    with transaction.atomic():
        function = Function.objects.create(
            owner=owner, name=name, version=1,
            memory_mb=_memory(memory_mb), timeout_seconds=_timeout(timeout_seconds),
            env=_env(env or {}), default_model=check_model_id(default_model) if default_model else "",
            allowed_models=[check_model_id(m) for m in allowed_models or []], token_budget=_budget(token_budget),
        )
        FunctionVersion.objects.create(
            function=function, number=1, archive=archive.data, sha256=archive.sha256,
            files=archive.files, unpacked_bytes=archive.unpacked_bytes,
        )
    return function


def update_function(*, function: Function, code: bytes | None = None, filename: str = "main.py",
                    memory_mb: int | None = None, timeout_seconds: int | None = None,
                    env: dict[str, str] | None = None, default_model: str | None = None,
                    allowed_models: list[str] | None = None, token_budget: int | None = None,
                    clear_token_budget: bool = False) -> Function:
    """Change a function's settings; new code becomes a new version. Jobs already queued keep their version."""
    archive = build_archive(code, filename) if code is not None else None
    with transaction.atomic():
        function = Function.objects.select_for_update().get(pk=function.pk)
        if memory_mb is not None:
            function.memory_mb = _memory(memory_mb)
        if timeout_seconds is not None:
            function.timeout_seconds = _timeout(timeout_seconds)
        if env is not None:
            function.env = _env(env)
        if default_model is not None:
            function.default_model = check_model_id(default_model) if default_model else ""
        if allowed_models is not None:
            function.allowed_models = [check_model_id(m) for m in allowed_models]
        if token_budget is not None or clear_token_budget:
            function.token_budget = _budget(token_budget)
        if archive is not None:
            function.version += 1
            FunctionVersion.objects.create(
                function=function, number=function.version, archive=archive.data, sha256=archive.sha256,
                files=archive.files, unpacked_bytes=archive.unpacked_bytes,
            )
        function.save()
    return function


def delete_function(*, function: Function) -> None:
    """Hide the function from its owner; its jobs and versions stay for the bill."""
    Function.objects.filter(pk=function.pk, deleted_at__isnull=True).update(deleted_at=timezone.now())


def get_function(*, owner: User, function_id: Any) -> Function:
    """The owner's live function; NotFound for another user's function as for one that never existed."""
    pk = _uuid(function_id)
    function = pk and Function.objects.filter(pk=pk, owner=owner, deleted_at__isnull=True).first()
    if not function:
        raise NotFound(f"Function {function_id} not found.", code="function_not_found")
    return function


def _uuid(value: Any) -> uuid.UUID | None:
    """An id from a URL or a body; None when it is not a UUID (so it answers 404 like an unknown id)."""
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        return None


def _memory(value: int | None) -> int:
    memory = settings.JOB_DEFAULT_MEMORY_MB if value is None else int(value)
    if not 16 <= memory <= settings.JOB_MAX_MEMORY_MB:
        raise DomainError(f"memory must be between 16 and {settings.JOB_MAX_MEMORY_MB} MB.", code="invalid_memory")
    return memory


def _timeout(value: int | None) -> int:
    timeout = settings.JOB_DEFAULT_TIMEOUT if value is None else int(value)
    if not 1 <= timeout <= settings.JOB_MAX_TIMEOUT:
        raise DomainError(f"timeout must be between 1 and {settings.JOB_MAX_TIMEOUT} s.", code="invalid_timeout")
    return timeout


def _env(env: dict[str, Any]) -> dict[str, str]:
    if not isinstance(env, dict):
        raise DomainError("env must be an object of names to strings.", code="invalid_env")
    for name, value in env.items():
        if not ENV_NAME_PATTERN.match(str(name)) or not isinstance(value, (str, int, float, bool)):
            raise DomainError(f"Invalid environment variable {name!r}.", code="invalid_env")
    return {str(name): str(value) for name, value in env.items()}


def _budget(value: int | None) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise DomainError("tokenBudget must be a positive integer.", code="invalid_token_budget")
    return value


# --- jobs -----------------------------------------------------------------------------------------------------

def submit_job(*, owner: User, function: Function, model_id: str | None, input_data: Any,
               token_budget: int | None = None) -> Job:
    """Record a queued job and enqueue it once the row is committed.

    Raises TooLarge (input_too_large) and DomainError (invalid_model_id, unknown_model). If the broker refuses
    the message, the job is failed with `queue_unavailable` rather than left queued forever.
    """
    payload_size = len(json.dumps(input_data).encode())
    if payload_size > settings.JOB_INPUT_MAX_BYTES:
        raise TooLarge(f"inputData is {payload_size} bytes; the limit is {settings.JOB_INPUT_MAX_BYTES}.",
                       code="input_too_large")
    model = model_id or function.default_model or settings.DEFAULT_MODEL_ID
    # Raises invalid_model_id for an id that cannot be one, and unknown_model (400, with the available ids) for a
    # model no enabled node serves now.
    node = route_model(model)
    model = node.model_id or model  # an operator's alias runs, and is billed, as the model it stands for
    budgets = [b for b in (_budget(token_budget), function.token_budget) if b is not None]
    # Only the version's id: its archive (up to megabytes of code) is the runner's to read, not the admission's.
    version_id = function.versions.values_list("id", flat=True).get(number=function.version)
    with transaction.atomic():
        job = Job.objects.create(
            owner=owner, function=function, function_version_id=version_id, model_id=model,
            node=node.name, queue=node.queue, input_data=input_data, memory_mb=function.memory_mb,
            timeout_seconds=function.timeout_seconds, token_budget=min(budgets) if budgets else None,
        )
        transaction.on_commit(lambda: _enqueue(job))
    return job


def _enqueue(job: Job) -> None:
    from .dispatch import enqueue_job

    try:
        enqueue_job(job.pk, job.queue)
    except Exception as exc:  # the broker's client raises many types; each must fail the job visibly
        logger.error("job %s: could not enqueue: %s", job.pk, exc)
        Job.objects.move(job.pk, JobStatus.FAILED, error_code="queue_unavailable",
                         error_message=f"The job queue is unavailable: {exc}", finished_at=timezone.now())


def get_job(*, owner: User, job_id: Any) -> Job:
    """The owner's job; NotFound for another user's job as for one that never existed."""
    pk = _uuid(job_id)
    job = pk and Job.objects.select_related("function_version").filter(pk=pk, owner=owner).first()
    if not job:
        raise NotFound(f"Job {job_id} not found.", code="job_not_found")
    return job


def cancel_job(*, job: Job) -> Job:
    """Cancel a queued or running job. A running job's container is killed by its worker within a second.

    Raises Conflict (job_finished) when the job already ended.
    """
    if not Job.objects.move(job.pk, JobStatus.CANCELLED, error_code="cancelled",
                            error_message="Cancelled by the user.", finished_at=timezone.now()):
        job.refresh_from_db()
        raise Conflict(f"Job {job.pk} already ended ({job.status}).", code="job_finished", status=409)
    job.refresh_from_db()
    return job
