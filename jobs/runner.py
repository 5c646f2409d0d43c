"""Runs one job: claim, prepare, run, collect, finalize, and always clean up. Orchestration only.

A job runs on a warm container of its resource profile when the worker's pool has one ready (`warm_pool`), else
on a cold one created for it; both are hardened alike, serve that one job, and report the same events and metrics.

Redelivery safety: the claim is a conditional UPDATE (queued -> running), so a message delivered twice starts
at most one container. A delivery that finds its job still `running` long past its timeout means the worker
that held it died: the job is failed as `worker_lost` (it is not run again, since its script may already have
spent tokens).
"""
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from core import metrics
from core.errors import DomainError
from models_catalog.services import node_named, route_model

from . import events, results, warm_pool
from .code_archive import extract_archive
from .docker_backend import (
    ContainerError,
    ContainerGone,
    ContainerOutcome,
    ContainerSpec,
    DockerBackend,
)
from .exits import interpret_exit
from .metering.gateway import GatewayConfig, JobGateway, ModelRoute, ResultReport
from .metering.ledger import ledger_totals
from .models import Job, JobStatus
from .warm_pool import Profile, Slot, SlotUnavailable, WarmPool
from .workdir import JobFolders, WorkdirError, create_job_folders, share_socket, share_tree, write_shared_file

logger = logging.getLogger(__name__)

SDK_DIR = Path(__file__).resolve().parent.parent / "sdk"
CONTAINER_CODE_DIR = "/job/code"
CONTAINER_SDK_DIR = "/opt/ainode"
CONTAINER_SOCKET_DIR = "/run/ainode"
CONTAINER_OUTPUT_DIR = "/job/out"
CONTAINER_INPUT_FILE = "/job/input/payload.json"
RUNTIME_USER = "10001:10001"
CANCEL_CHECK_SECONDS = 0.5
RESERVED_ENV = {"JOB_ID", "FUNCTION_ID", "LLM_MODEL", "AI_ENDPOINT", "OUTPUT_DIR", "PAYLOAD", "PAYLOAD_FILE",
                "PYTHONPATH", "CODE_DIR", "HOME"}


def run_job(job_id: str | uuid.UUID, *, backend: DockerBackend | None = None) -> None:
    Job.objects.filter(pk=job_id).update(deliveries=F("deliveries") + 1)
    if not Job.objects.move(job_id, JobStatus.RUNNING, started_at=timezone.now(), worker_id=settings.WORKER_ID):
        _handle_unclaimed(job_id)
        return
    job = Job.objects.select_related("function_version").get(pk=job_id)
    logger.info("job %s: claimed by %s", job.id, settings.WORKER_ID)
    metrics.job_claimed(queue_wait_seconds=(job.started_at - job.created_at).total_seconds())
    backend = backend or _shared_backend()
    metrics.JOBS_RUNNING.inc()  # and dec() in finally
    # The job's live events: buffered here, written by the writer's own thread (never on the script's path).
    live = events.writer_for(job.id)
    live.emit(*events.status_event(job))
    try:
        with ExitStack() as cleanup:
            try:
                outcome, gateway = _execute(job, backend, live, cleanup)
                # Model calls may outlive the container: stopping the gateway drops the requests not yet forwarded,
                # cancels the calls in flight and waits (a few seconds) until they are on the ledger, so that the
                # ledger is complete before the job's totals are taken from it.
                gateway.stop()
                _finalize(job, outcome, gateway.report)
            except (ContainerError, WorkdirError) as exc:
                logger.error("job %s: executor failed: %s", job.id, exc)
                _fail(job, exc.code, str(exc))
            except Exception as exc:
                logger.exception("job %s: internal error", job.id)
                _fail(job, "internal_error", f"The worker failed while running the job: {exc}")
    finally:
        job.refresh_from_db()
        for event in events.end_events(job):
            live.emit(*event)
        live.close()
        results.publish(job)
        metrics.JOBS_RUNNING.dec()
        metrics.job_finished(status=job.status, error_code=job.error_code, run_seconds=_run_seconds(job))
        logger.info("job %s: %s (%s)", job.id, job.status, job.error_code or "ok")


def _execute(job: Job, backend: DockerBackend, live: events.EventWriter,
             cleanup: ExitStack) -> tuple[ContainerOutcome, JobGateway]:
    """Run the job on a warm container of its profile if the pool has one ready, else on a cold one. What must be
    undone afterwards (the gateway, the container, the folder) is pushed on `cleanup`."""
    pool = warm_pool.current()
    slot = pool.take(_profile(job)) if pool is not None else None
    if slot is not None:
        ran = _run_warm(job, backend, live, pool, slot, cleanup)
        if ran is not None:
            return ran
    folders = _prepare_workdir(job, cleanup)
    gateway = _start_gateway(job, folders.run, live, cleanup)
    outcome = backend.run(
        _container_spec(job, folders),
        should_cancel=_cancel_checker(job.id),
        on_started=_started_recorder(job.id, time.monotonic()),
        on_output=live.output,
    )
    return outcome, gateway


def _run_warm(job: Job, backend: DockerBackend, live: events.EventWriter, pool: WarmPool, slot: Slot,
              cleanup: ExitStack) -> tuple[ContainerOutcome, JobGateway] | None:
    """Run the job in `slot`; None when its container turned out not to be waiting (the job did not start)."""
    asked_at = time.monotonic()
    with ExitStack() as attempt:
        attempt.callback(pool.release, slot)
        folders = _folders_at(slot.path)
        _fill_workdir(job, folders)
        gateway = _start_gateway(job, folders.run, live, attempt)
        spec = _container_spec(job, folders)
        try:
            outcome = backend.supervise(
                slot.container_id, spec, should_cancel=_cancel_checker(job.id),
                on_started=_started_recorder(job.id, asked_at), on_output=live.output,
                begin=lambda: slot.begin(spec.env, is_running=lambda: backend.is_running(slot.container_id)),
            )
        except (SlotUnavailable, ContainerGone) as exc:
            logger.warning("job %s: warm container %s unusable (%s); cold path", job.id, slot.container_id[:12], exc)
            return None
        slot.finished = True
        logger.info("job %s: ran on warm container %s", job.id, slot.container_id[:12])
        cleanup.push(attempt.pop_all())
        return outcome, gateway


def _start_gateway(job: Job, run_dir: Path, live: events.EventWriter, cleanup: ExitStack) -> JobGateway:
    gateway = JobGateway(_gateway_config(job, on_event=live.emit), socket_dir=str(run_dir)).start()
    cleanup.callback(gateway.stop)
    share_socket(Path(gateway.socket_path))
    live.emit("usage", gateway.meter.snapshot())
    return gateway


def _started_recorder(job_id: uuid.UUID, asked_at: float):
    def on_started(container_id: str) -> None:
        metrics.container_started(seconds=time.monotonic() - asked_at)
        Job.objects.filter(pk=job_id).update(container_id=container_id)

    return on_started


def _run_seconds(job: Job) -> float | None:
    if job.started_at is None or job.finished_at is None:
        return None
    return (job.finished_at - job.started_at).total_seconds()


_backends: dict[tuple[int, str], DockerBackend] = {}


def _shared_backend() -> DockerBackend:
    """One engine client per process and engine address, kept across jobs: a new client first asks the engine for
    its API version, a round trip on every job's path. A forked child makes its own."""
    key = (os.getpid(), settings.DOCKER_HOST)
    if key not in _backends:
        _backends[key] = DockerBackend(base_url=settings.DOCKER_HOST or None)
    return _backends[key]


def _handle_unclaimed(job_id: str | uuid.UUID) -> None:
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        logger.warning("job %s: delivered but does not exist; dropped", job_id)
    elif _is_lost(job):
        _declare_lost(job, backend=None)
    else:
        logger.info("job %s: delivered again while %s; not run twice", job.id, job.status)


def recover_lost_jobs(*, backend: DockerBackend | None = None) -> int:
    """Fail the jobs whose worker vanished (still `running` long past their timeout) and remove their containers.

    Runs when a worker starts and periodically: a broker that does not redeliver (the filesystem transport) would
    otherwise leave such a job `running` forever. Returns how many jobs it failed.
    """
    running = Job.objects.filter(status=JobStatus.RUNNING, started_at__lt=timezone.now() - _lost_grace())
    lost = [job for job in running.only("id", "status", "started_at", "timeout_seconds") if _is_lost(job)]
    for job in lost:
        _declare_lost(job, backend=backend)
    return len(lost)


def _lost_grace() -> timedelta:
    return timedelta(seconds=settings.JOB_LOST_GRACE_SECONDS)


def _is_lost(job: Job) -> bool:
    if job.status != JobStatus.RUNNING or job.started_at is None:
        return False
    return timezone.now() > job.started_at + timedelta(seconds=job.timeout_seconds) + _lost_grace()


def _declare_lost(job: Job, *, backend: DockerBackend | None) -> None:
    if not Job.objects.move(job.pk, JobStatus.FAILED, error_code="worker_lost", finished_at=timezone.now(),
                            error_message="The worker running this job stopped before it finished."):
        return
    logger.warning("job %s: its worker was lost; failed", job.pk)
    metrics.job_finished(status=JobStatus.FAILED, error_code="worker_lost", run_seconds=None)
    backend = backend or DockerBackend(base_url=settings.DOCKER_HOST or None)
    try:
        backend.remove_job_containers(str(job.pk))
        # A warm container was made before its job existed and carries no job label: it is found by its id.
        container_id = Job.objects.filter(pk=job.pk).values_list("container_id", flat=True).first()
        if container_id:
            backend.remove_container(container_id)
    except ContainerError as exc:
        logger.warning("job %s: could not remove its container: %s", job.pk, exc)
    lost = Job.objects.select_related("function_version").get(pk=job.pk)
    events.record_end(lost)
    results.publish(lost)


def _prepare_workdir(job: Job, cleanup: ExitStack) -> JobFolders:
    """Lay out the job's code, input, SDK and socket folders, readable (not writable) by the container's user only;
    the folder is removed when `cleanup` closes."""
    folders = make_workdir_folders(settings.JOB_WORK_ROOT / str(job.id), cleanup=cleanup)
    _fill_workdir(job, folders)
    return folders


def make_workdir_folders(path: Path, *, cleanup: ExitStack | None = None) -> JobFolders:
    """The folders a job container mounts at `path` (a job's, or a warm slot's): code, input, run (the gateway's
    socket, a warm slot's start FIFO) and sdk, made safely by `workdir`, with the SDK copied in."""
    folders = create_job_folders(path.parent, path.name)
    if cleanup is not None:
        cleanup.callback(shutil.rmtree, folders.path, ignore_errors=True)
    # The SDK is mounted from the job's folder, not from the code checkout: the engine resolves bind mounts on its
    # own host, and a worker running in a container shares only JOB_WORK_ROOT with it.
    shutil.copytree(SDK_DIR, folders.sdk, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
    share_tree(folders.sdk)
    return folders


def _folders_at(path: Path) -> JobFolders:
    return JobFolders(path=path, code=path / "code", input=path / "input", run=path / "run", sdk=path / "sdk")


def _fill_workdir(job: Job, folders: JobFolders) -> None:
    """The job's own code and input, in folders made by `make_workdir_folders`."""
    extract_archive(bytes(job.function_version.archive), str(folders.code))
    share_tree(folders.code)
    payload = json.dumps(job.input_data)
    if len(payload.encode()) > settings.JOB_PAYLOAD_ENV_MAX_BYTES:
        write_shared_file(folders.input, "payload.json", payload.encode())


def _profile(job: Job) -> Profile:
    return _profile_of(memory_mb=job.memory_mb)


def default_profile() -> Profile:
    """The profile of a job of a function with the default memory: the one a pool warms from the start."""
    return _profile_of(memory_mb=settings.JOB_DEFAULT_MEMORY_MB)


def _profile_of(*, memory_mb: int) -> Profile:
    return Profile(image=settings.JOB_RUNTIME_IMAGE, memory_bytes=memory_mb * 1024 * 1024,
                   nano_cpus=int(settings.JOB_CPUS * 1_000_000_000), pids_limit=settings.JOB_PIDS_LIMIT,
                   tmpfs_mb=settings.JOB_TMPFS_MB, nofile_limit=settings.JOB_NOFILE_LIMIT)


def _container_spec(job: Job, folders: JobFolders) -> ContainerSpec:
    env = {key: str(value) for key, value in (job.function.env or {}).items() if key not in RESERVED_ENV}
    env.update({
        "JOB_ID": str(job.id),
        "FUNCTION_ID": str(job.function_id),
        "LLM_MODEL": job.model_id,
        "AI_ENDPOINT": f"unix://{CONTAINER_SOCKET_DIR}/gateway.sock",
        "OUTPUT_DIR": CONTAINER_OUTPUT_DIR,
        "CODE_DIR": CONTAINER_CODE_DIR,
        "PYTHONPATH": CONTAINER_SDK_DIR,
        "HOME": "/tmp",
    })
    with_input = (folders.input / "payload.json").exists()
    if with_input:
        env["PAYLOAD_FILE"] = CONTAINER_INPUT_FILE
    else:
        env["PAYLOAD"] = json.dumps(job.input_data)
    return hardened_spec(_profile(job), folders.path, job_id=str(job.id), env=env, with_input=with_input,
                         command=["python3", "-B", f"{CONTAINER_SDK_DIR}/runner.py"],
                         timeout_seconds=job.timeout_seconds)


def warm_spec(profile: Profile, slot: Path) -> ContainerSpec:
    """A pool container of `profile` in the slot folder `slot`: its runtime waits there for a job's environment."""
    return hardened_spec(profile, slot, job_id="", env={"PYTHONPATH": CONTAINER_SDK_DIR, "HOME": "/tmp"},
                         with_input=True, command=["python3", "-B", f"{CONTAINER_SDK_DIR}/warm.py"],
                         timeout_seconds=0)


def hardened_spec(profile: Profile, workdir: Path, *, job_id: str, env: dict[str, str], with_input: bool,
                  command: list[str], timeout_seconds: float) -> ContainerSpec:
    """The one container spec of a job, cold or warm: mounts from the folders of `workdir` (see
    `make_workdir_folders`), read-only; the limits of `profile`."""
    folders = _folders_at(workdir)
    binds = {
        str(folders.code): {"bind": CONTAINER_CODE_DIR, "mode": "ro"},
        str(folders.sdk): {"bind": CONTAINER_SDK_DIR, "mode": "ro"},
        str(folders.run): {"bind": CONTAINER_SOCKET_DIR, "mode": "ro"},
    }
    if with_input:
        binds[str(folders.input)] = {"bind": "/job/input", "mode": "ro"}
    tmpfs_size = f"size={profile.tmpfs_mb}m,mode=1777,noexec,nosuid,nodev"
    return ContainerSpec(
        job_id=job_id,
        image=profile.image,
        command=command,
        env=env,
        binds=binds,
        tmpfs={"/tmp": tmpfs_size, CONTAINER_OUTPUT_DIR: tmpfs_size},
        memory_bytes=profile.memory_bytes,
        nano_cpus=profile.nano_cpus,
        pids_limit=profile.pids_limit,
        nofile_limit=profile.nofile_limit,
        user=RUNTIME_USER,
        timeout_seconds=timeout_seconds,
        output_limit_bytes=settings.JOB_OUTPUT_LIMIT_BYTES,
    )


def start_warm_pool() -> WarmPool | None:
    """Start this process's warm pool (when WARM_POOL_SIZE > 0), warming the default profile."""
    if settings.WARM_POOL_SIZE <= 0 or warm_pool.current() is not None:
        return warm_pool.current()
    pool = WarmPool(
        size=settings.WARM_POOL_SIZE, root=settings.JOB_WORK_ROOT, spec_for=warm_spec, layout=make_workdir_folders,
        backend_factory=lambda: DockerBackend(base_url=settings.DOCKER_HOST or None),
        max_age_seconds=settings.WARM_POOL_MAX_AGE_SECONDS, max_profiles=settings.WARM_POOL_PROFILES,
    )
    warm_pool.install(pool.start([default_profile()]))
    return pool


def stop_warm_pool() -> None:
    pool = warm_pool.install(None)
    if pool is not None:
        pool.stop()


def reap_orphan_containers() -> int:
    """Remove the warm containers of this host's dead workers."""
    return warm_pool.reap_orphans(DockerBackend(base_url=settings.DOCKER_HOST or None), root=settings.JOB_WORK_ROOT)


def _gateway_config(job: Job, *, on_event: Callable[[str, dict[str, Any]], None] | None = None) -> GatewayConfig:
    """What the job's gateway allows: the job's model on the node it was routed to, and the function's other
    allowed models on theirs."""
    routes: dict[str, ModelRoute] = {}
    own_node = node_named(job.node) or route_model(job.model_id, queued_jobs=Job.objects.queued_by_node)
    routes[job.model_id] = ModelRoute(job.model_id, own_node.name, own_node.kind, own_node.url)
    for model_id in job.function.allowed_models or []:
        if model_id not in routes:
            try:
                node = route_model(model_id, queued_jobs=Job.objects.queued_by_node)
            except DomainError:  # not served now: the gateway refuses calls to it as model_not_allowed
                continue
            routes[model_id] = ModelRoute(node.model_id or model_id, node.name, node.kind, node.url)
    return GatewayConfig(
        job_id=str(job.id), default_model=job.model_id, routes=routes, budget=job.token_budget,
        max_output_tokens=settings.AI_MAX_OUTPUT_TOKENS, call_timeout=settings.AI_CALL_TIMEOUT,
        max_body_bytes=settings.GATEWAY_MAX_BODY_BYTES, max_concurrent_calls=settings.GATEWAY_MAX_CONCURRENT_CALLS,
        max_connections=settings.GATEWAY_MAX_CONNECTIONS, socket_timeout=settings.GATEWAY_SOCKET_TIMEOUT,
        drain_timeout=settings.GATEWAY_DRAIN_SECONDS, result_limit=settings.JOB_RESULT_MAX_BYTES, on_event=on_event,
    )


def _cancel_checker(job_id: uuid.UUID):
    last_check = 0.0

    def should_cancel() -> bool:
        nonlocal last_check
        if time.monotonic() - last_check < CANCEL_CHECK_SECONDS:
            return False
        last_check = time.monotonic()
        return Job.objects.filter(pk=job_id, status=JobStatus.CANCELLED).exists()

    return should_cancel


def _text(data: bytes) -> str:
    # PostgreSQL text cannot hold NUL characters; a hostile script's output may be full of them.
    return data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


# What the runtime reports comes from inside the container, so the script may have written it: nothing in it may
# stop the job's row from being saved (PostgreSQL refuses NUL in text and jsonb; a number may overflow a column).
ERROR_MESSAGE_MAX_CHARS = 16_384


def _clean_json(value: Any) -> Any:
    """`value` (parsed JSON) with every NUL character, in strings and keys, replaced by U+FFFD, and numbers too large
    for a float (`1e999` parses as infinity, which JSON columns refuse) replaced by null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_clean_json(item) for item in value]
    if isinstance(value, dict):
        return {key.replace("\x00", "\ufffd"): _clean_json(item) for key, item in value.items()}
    return value


def _script_error(error: dict[str, Any] | None) -> str:
    """The script's exception as one bounded line of text, whatever types the report holds."""
    if not error:
        return ""
    text = f"{error.get('type', 'Error')}: {error.get('message', '')}"
    return text.replace("\x00", "\ufffd")[:ERROR_MESSAGE_MAX_CHARS]


def _peak_memory(outcome: ContainerOutcome, report: ResultReport, limit_bytes: int) -> int | None:
    """The larger of the engine's and the runtime's figures; the runtime's is believed only up to the job's limit
    (a container cannot use more), since the script may have posted it."""
    reported = report.peak_memory_bytes
    if not isinstance(reported, int) or isinstance(reported, bool) or reported <= 0:
        reported = None
    peaks = [p for p in (outcome.peak_memory_bytes, min(reported, limit_bytes) if reported else None) if p]
    return max(peaks) if peaks else None


def _finalize(job: Job, outcome: ContainerOutcome, report: ResultReport) -> None:
    script_error = _script_error(report.error)
    verdict = interpret_exit(
        exit_code=outcome.exit_code, oom_killed=outcome.oom_killed, timed_out=outcome.timed_out,
        cancelled=outcome.cancelled, timeout_seconds=job.timeout_seconds, memory_mb=job.memory_mb,
        script_error=script_error,
    )
    status, error_code, message = verdict.status, verdict.error_code, verdict.message
    if status == JobStatus.SUCCEEDED and report.rejected_code:
        status, error_code = JobStatus.FAILED, report.rejected_code
        message = f"The result is larger than {settings.JOB_RESULT_MAX_BYTES} bytes."
    fields: dict[str, Any] = {
        "exit_code": outcome.exit_code,
        "stdout": _text(outcome.stdout),
        "stderr": _text(outcome.stderr),
        "stdout_truncated": outcome.stdout_truncated,
        "stderr_truncated": outcome.stderr_truncated,
        "result": _clean_json(report.result) if status == JobStatus.SUCCEEDED else None,
        "duration_ms": outcome.duration_ms,
        "peak_memory_bytes": _peak_memory(outcome, report, job.memory_mb * 1024 * 1024),
        "container_id": outcome.container_id,
        "finished_at": timezone.now(),
        # The ledger is the truth; the running totals kept during the job must agree with it.
        **ledger_totals(str(job.pk)),
    }
    if not Job.objects.move(job.pk, status, error_code=error_code, error_message=message, **fields):
        # Cancelled by a user while it ran: the status stays, the output is still kept for them to read.
        fields.pop("finished_at")
        Job.objects.filter(pk=job.pk).update(**fields)


def _fail(job: Job, error_code: str, message: str) -> None:
    Job.objects.move(job.pk, JobStatus.FAILED, error_code=error_code, error_message=message,
                     finished_at=timezone.now())
