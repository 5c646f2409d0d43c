"""Use cases of functions and jobs. Views, tasks, admin actions and commands all come through here."""
import json
import re
import uuid
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from billing import job_money
from billing.quotas import job_budget, lock_quota
from billing.rollups import add_job_to_rollups
from core import metrics
from core.errors import Conflict, DomainError, NotFound, TooLarge
from core.inserts import insert
from core.lookups import CachedLookup
from models_catalog.services import check_model_id, route_model
from outbound import services as outbound

from . import events
from .code_archive import CodeArchive, build_archive
from .dependencies import admission_hold, layer_for, wait_until_built
from .dispatch import dispatched_on_admission, hand_over
from .endings import end_job
from .idempotency import once
from .models import Function, FunctionVersion, IdempotencyKey, IdempotencyScope, Job, JobStatus, Runtime
from .node_packages import DependenciesRejected, NodePackages, parse_node_packages
from .requirements import Requirements, parse_requirements

ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# What get_function names the id of a function's current version, read with the function.
CURRENT_VERSION_ID = "current_version_pk"
# ... and the id of that version's dependency layer (None without one): a version never changes its layer.
CURRENT_LAYER_ID = "current_layer_pk"
# Live functions by owner and id; each request gets its own copy.
_live_functions: CachedLookup[Function] = CachedLookup("functions", copies=True)
# A trillion tokens: past any real job, and within every database's 64-bit integers.
MAX_TOKEN_BUDGET = 10**12


# --- functions ------------------------------------------------------------------------------------------------

def deploy_function(*, owner: User, name: str, code: bytes, filename: str = "main.py",
                    memory_mb: int | None = None, timeout_seconds: int | None = None,
                    env: dict[str, str] | None = None, default_model: str = "",
                    allowed_models: list[str] | None = None, token_budget: int | None = None,
                    requirements: str | None = None, runtime: str | None = None) -> Function:
    """Create a function with its first version. Its runtime is `runtime` (`python` or `node`) when given, else the
    upload's (jobs.code_archive.build_archive). Its dependencies are `requirements` (the text of a
    requirements.txt) when given, else the upload's own requirements.txt (a node function's: its package.json and
    package-lock.json); a set with packages gets its layer (jobs.dependencies), built once after the commit. Raises
    DomainError on bad code, runtime (`invalid_runtime`), requirements (`invalid_requirements`,
    `invalid_dependencies`) or limits."""
    archive = build_archive(code, filename, runtime)
    wanted = _requirements_of(archive, requirements)
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
            files=archive.files, unpacked_bytes=archive.unpacked_bytes, runtime=archive.runtime,
            requirements=wanted.text, layer=layer_for(wanted, archive.runtime),
        )
    return function


def _requirements_of(archive: CodeArchive | None, text: str | None,
                     current: FunctionVersion | None = None) -> Requirements | NodePackages:
    """A new version's requirements: `text` when given (empty clears them), else the upload's requirements.txt,
    else the current version's. Raises RequirementsRejected (`invalid_requirements`)."""
    if (archive.runtime if archive is not None else current.runtime) == Runtime.NODE:
        return _node_packages_of(archive, text, current)
    if text is not None:
        return parse_requirements(text)
    if archive is not None and archive.requirements is not None:
        return parse_requirements(archive.requirements)
    return parse_requirements(current.requirements if current is not None and current.runtime == Runtime.PYTHON
                              else "")


def _node_packages_of(archive: CodeArchive | None, text: str | None,
                      current: FunctionVersion | None) -> NodePackages:
    """A node version's dependencies: none when `text` is empty, else the upload's package.json and lockfile, else
    the current version's. Raises DependenciesRejected (`invalid_dependencies`), also for a requirements text."""
    if text:
        raise DependenciesRejected("A node function's dependencies are its package.json and package-lock.json, in "
                                   "its zip; requirements are Python's.")
    if text is not None:
        return NodePackages("")
    if archive is not None and archive.package_json is not None:
        return parse_node_packages(archive.package_json, archive.package_lock)
    return NodePackages(current.requirements if current is not None and current.runtime == Runtime.NODE else "")


def deploy_function_once(*, owner: User, idempotency_key: str | None, body_fingerprint: str,
                         **deploy: Any) -> tuple[Function, bool]:
    """`deploy_function`, once per Idempotency-Key: returns (the function, whether it was made by an earlier
    request with the key). Raises as deploy_function does, and Unprocessable `idempotency_key_reused`."""
    if idempotency_key is None:
        return deploy_function(owner=owner, **deploy), False
    return once(
        owner=owner, scope=IdempotencyScope.DEPLOY, key=idempotency_key, body_fingerprint=body_fingerprint,
        make=lambda: deploy_function(owner=owner, **deploy),
        made=lambda row: Function.objects.get(pk=row.function_id),
        record=lambda row, function: IdempotencyKey.objects.filter(pk=row.pk).update(function=function),
    )


def update_function(*, function: Function, code: bytes | None = None, filename: str = "main.py",
                    memory_mb: int | None = None, timeout_seconds: int | None = None,
                    env: dict[str, str] | None = None, default_model: str | None = None,
                    allowed_models: list[str] | None = None, token_budget: int | None = None,
                    clear_token_budget: bool = False, requirements: str | None = None,
                    runtime: str | None = None) -> Function:
    """Change a function's settings; new code or new `requirements` become a new version, which keeps the current
    version's code, runtime or requirements where it is given none (see `_requirements_of`). Jobs already queued
    keep their version."""
    archive = None
    if code is not None:
        archive = build_archive(code, filename, runtime or function.current_version.runtime)
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
        if archive is not None or requirements is not None:
            _add_version(function, archive, requirements)
        function.save()
    return function


def _add_version(function: Function, archive: CodeArchive | None, requirements: str | None) -> None:
    """The next version of `function` (locked by the caller): `archive` or the current code, with its requirements."""
    current = function.current_version
    wanted = _requirements_of(archive, requirements, current)
    function.version += 1
    if archive is None:
        archive = CodeArchive(data=bytes(current.archive), sha256=current.sha256, files=current.files,
                              unpacked_bytes=current.unpacked_bytes, runtime=current.runtime)
    FunctionVersion.objects.create(
        function=function, number=function.version, archive=archive.data, sha256=archive.sha256,
        files=archive.files, unpacked_bytes=archive.unpacked_bytes, runtime=archive.runtime,
        requirements=wanted.text,
        layer=layer_for(wanted, archive.runtime),
    )


def delete_function(*, function: Function) -> None:
    """Hide the function from its owner; its jobs and versions stay for the bill."""
    Function.objects.filter(pk=function.pk, deleted_at__isnull=True).update(deleted_at=timezone.now())
    functions_changed()


def get_function(*, owner: User, function_id: Any) -> Function:
    """The owner's live function, with its current version's id (CURRENT_VERSION_ID); NotFound for another user's
    function as for one that never existed. Cached (core.lookups): a hit runs no SQL."""
    pk = _uuid(function_id)
    function = pk and _live_functions.get(f"{owner.pk}:{pk}", lambda: _load_function(owner, pk))
    if not function:
        raise NotFound(f"Function {function_id} not found.", code="function_not_found")
    return function


def _load_function(owner: User, pk: uuid.UUID) -> Function | None:
    current = FunctionVersion.objects.filter(function=OuterRef("pk"), number=OuterRef("version"))
    return (Function.objects.filter(pk=pk, owner=owner, deleted_at__isnull=True)
            .annotate(**{CURRENT_VERSION_ID: Subquery(current.values("pk")),
                         CURRENT_LAYER_ID: Subquery(current.values("layer_id"))}).first())


def functions_changed(**_: Any) -> None:
    """Every process looks its functions up again (core.lookups: CachedLookup.invalidate). Also a signal receiver
    (jobs.apps), for saves and deletes of functions and versions anywhere."""
    _live_functions.invalidate()


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
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                              or not 1 <= value <= MAX_TOKEN_BUDGET):
        raise DomainError(f"tokenBudget must be an integer from 1 to {MAX_TOKEN_BUDGET}.",
                          code="invalid_token_budget")
    return value


# --- jobs -----------------------------------------------------------------------------------------------------

def submit_job(*, owner: User, function: Function, model_id: str | None, input_data: Any,
               token_budget: int | None = None, callback_url: str | None = None,
               api_key_id: int | None = None, interactive: bool = False) -> Job:
    """Record a queued job and enqueue it once the row is committed. An `interactive` job (a synchronous run, whose
    caller waits) goes before its owner's queued asynchronous jobs (jobs.fairness).

    Under a quota, the job is admitted first (billing.quotas.admit): its worst case is held until it ends, and a job
    without a token budget gets the quota's default one. Raises TooLarge (input_too_large), DomainError
    (invalid_input for text a database cannot store, invalid_model_id, unknown_model, too_many_jobs) and
    QuotaExceeded (quota_exceeded), and for a `callback_url` (which receives the job's end, outbound) DestinationRefused
    (destination_not_allowed, invalid_url) and DomainError (no_callback_secret). The job reaches the broker as JOB_DISPATCH says (jobs.dispatch.hand_over); one
    the broker refuses is failed with `queue_unavailable` rather than left queued for ever.
    """
    if not _storable(input_data):
        raise DomainError("inputData may not contain NUL characters (\\u0000) or unpaired surrogates.",
                          code="invalid_input")
    payload_size = len(json.dumps(input_data).encode())
    if payload_size > settings.JOB_INPUT_MAX_BYTES:
        raise TooLarge(f"inputData is {payload_size} bytes; the limit is {settings.JOB_INPUT_MAX_BYTES}.",
                       code="input_too_large")
    model = model_id or function.default_model or settings.DEFAULT_MODEL_ID
    # Raises invalid_model_id for an id that cannot be one, and unknown_model (400, with the available ids) for a
    # model no enabled node serves now.
    node = route_model(model, queued_jobs=Job.objects.queued_by_node)
    model = node.model_id or model  # an operator's alias runs, and is billed, as the model it stands for
    routes = _routes_of_allowed(function, own=model)
    budgets = [b for b in (_budget(token_budget), function.token_budget) if b is not None]
    version_id, layer_id = _current_version(function)
    with transaction.atomic():
        # Locked first: admissions of one user's jobs take turns, so each sees the holds of those before it.
        quota = lock_quota(owner)
        budget = job_budget(quota=quota, token_budget=min(budgets) if budgets else None)
        # A job whose dependencies are still being built is held: marked sent, so that no relay sends it, and sent
        # by the build's end (jobs.dependencies.release_held_jobs).
        held = admission_hold(layer_id)
        job = create_job(
            owner=owner, function=function, function_version_id=version_id, model_id=model,
            node=node.name, queue=node.queue, input_data=input_data, memory_mb=function.memory_mb,
            timeout_seconds=function.timeout_seconds, token_budget=budget,
            dispatched_at=timezone.now() if held else dispatched_on_admission(), routes=routes,
            interactive=interactive,
        )
        if quota is not None:
            may_call = [model, *(target for target, _ in routes.values())]
            job_money.admit(owner=owner, quota=quota, job_id=job.pk, model_ids=may_call, token_budget=budget)
        if callback_url:
            outbound.add_callback(owner=owner, job_id=job.pk, url=callback_url)
        if api_key_id is not None:  # the key that submitted it, for the key's own alert budgets
            outbound.note_key(job_id=job.pk, api_key_id=api_key_id)
        # The `queued` event commits with the job, before the message: the worker's `running` must come after it.
        events.record_queued(job)
        if not held:
            hand_over(job)
    metrics.job_submitted(model=model, queue=node.queue)
    return job


def _current_version(function: Function) -> tuple[int, int | None]:
    """The ids of `function`'s current version and of its dependency layer. Only ids: the version's archive (up to
    megabytes of code) is the runner's to read, not the admission's."""
    if getattr(function, CURRENT_VERSION_ID, None):
        return getattr(function, CURRENT_VERSION_ID), getattr(function, CURRENT_LAYER_ID, None)
    return function.versions.values_list("id", "layer_id").get(number=function.version)


def wait_for_dependencies(*, function: Function, timeout: float) -> float:
    """Wait (at most `timeout` seconds) until `function`'s current dependencies are built, for a synchronous run;
    returns the seconds waited. Raises Conflict `dependencies_building` or `dependency_build_failed`."""
    return wait_until_built(_current_version(function)[1], timeout=timeout)


def _routes_of_allowed(function: Function, *, own: str) -> dict[str, list[str]]:
    """Where each of the function's other allowed models is served now, {name: [model, node]}: the job's gateway
    forwards to these and nowhere else. A model no node serves now is left out (the gateway refuses it as
    model_not_allowed), as is one that names the job's own model."""
    routes: dict[str, list[str]] = {}
    for name in function.allowed_models or []:
        if name == own or name in routes:
            continue
        try:
            node = route_model(name, queued_jobs=Job.objects.queued_by_node)
        except DomainError:
            continue
        routes[name] = [node.model_id or name, node.name]
    return routes


def _storable(value: Any) -> bool:
    """Whether JSON `value` can be stored: PostgreSQL's JSON holds no NUL character, and no database takes an
    unpaired surrogate (JSON text may spell both, as \\u0000 and \\ud800)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return "\x00" not in value
    if isinstance(value, dict):
        return all(_storable(key) and _storable(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_storable(item) for item in value)
    return True


def submit_job_once(*, owner: User, idempotency_key: str | None, body_fingerprint: str,
                    **submit: Any) -> tuple[Job, bool]:
    """`submit_job`, once per Idempotency-Key: returns (the job, whether it was made by an earlier request with the
    key). A repeat makes no second job, so nothing is run or billed twice. Raises as submit_job does, and
    Unprocessable `idempotency_key_reused` when the key came with another body."""
    if idempotency_key is None:
        return submit_job(owner=owner, **submit), False
    return once(
        owner=owner, scope=IdempotencyScope.RUN, key=idempotency_key, body_fingerprint=body_fingerprint,
        make=lambda: submit_job(owner=owner, **submit),
        made=lambda row: Job.objects.select_related("function_version").get(pk=row.job_id),
        record=lambda row, job: IdempotencyKey.objects.filter(pk=row.pk).update(job=job),
    )


def create_job(**fields: Any) -> Job:
    """Insert a Job row and count it in the day's usage roll-up, in one transaction: the only way a job is made
    (jobs that skip it are missing from the dashboard until `rebuild_usage_rollups`). The row is written by
    `core.inserts.insert`, which sends no save signals: nothing listens for Job's."""
    job = Job(**fields)
    # No savepoint inside a caller's transaction (submit_job's): a failure here fails the whole admission anyway.
    with transaction.atomic(savepoint=False):
        insert(job)
        add_job_to_rollups(job)
    return job


def get_job(*, owner: User, job_id: Any) -> Job:
    """The owner's job; NotFound for another user's job as for one that never existed."""
    pk = _uuid(job_id)
    job = pk and Job.objects.select_related("function_version").filter(pk=pk, owner=owner).first()
    if not job:
        raise NotFound(f"Job {job_id} not found.", code="job_not_found")
    return job


def cancel_job(*, job: Job) -> Job:
    """Cancel a queued or running job. A running job's container is killed by its worker within a second; its
    hold on its owner's quota lasts until its worker has put its last calls on the ledger (jobs.runner).

    Raises Conflict (job_finished) when the job already ended.
    """
    fields = {"error_code": "cancelled", "error_message": "Cancelled by the user.", "finished_at": timezone.now()}
    # A queued job will never reach a worker: its events end here. A running one's worker notices within a second,
    # kills the container and writes its last events itself (its status, then the result with the output).
    if end_job(job.pk, JobStatus.CANCELLED, among=Job.objects.filter(status=JobStatus.QUEUED), **fields):
        job_money.release(job_id=job.pk)  # it never ran: nothing of it can reach the ledger
        job.refresh_from_db()
        events.record_end(job)
        return job
    if not end_job(job.pk, JobStatus.CANCELLED, **fields):
        job.refresh_from_db()
        raise Conflict(f"Job {job.pk} already ended ({job.status}).", code="job_finished", status=409)
    job.refresh_from_db()
    return job
