"""Runs one job: claim, prepare, run, collect, finalize, and always clean up. Orchestration only.

A job runs on a warm container of its resource profile when the worker's pool has one ready (`warm_pool`), else
on a cold one created for it; both are hardened alike and serve that one job.

Redelivery safety: the claim is a conditional UPDATE (queued -> running), so a message delivered twice starts
at most one container. A delivery that finds its job still `running` long past its timeout means the worker
that held it died: the job is failed as `worker_lost` (it is not run again, since its script may already have
spent tokens).
"""
import json
import logging
import os
import shutil
import time
import uuid
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from core.errors import DomainError
from models_catalog.services import node_named, route_model

from . import results, warm_pool
from .code_archive import extract_archive
from .docker_backend import ContainerError, ContainerGone, ContainerOutcome, ContainerSpec, DockerBackend
from .exits import interpret_exit
from .metering.gateway import GatewayConfig, JobGateway, ModelRoute, ResultReport
from .metering.ledger import ledger_totals
from .models import Job, JobStatus
from .warm_pool import Profile, Slot, SlotUnavailable, WarmPool

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
                "PYTHONPATH", "CODE_DIR", "JOB_GATEWAY", "HOME"}


def run_job(job_id: str | uuid.UUID, *, backend: DockerBackend | None = None) -> None:
    Job.objects.filter(pk=job_id).update(deliveries=F("deliveries") + 1)
    if not Job.objects.move(job_id, JobStatus.RUNNING, started_at=timezone.now(), worker_id=settings.WORKER_ID):
        _handle_unclaimed(job_id)
        return
    job = Job.objects.select_related("function_version").get(pk=job_id)
    logger.info("job %s: claimed by %s", job.id, settings.WORKER_ID)
    backend = backend or _shared_backend()
    try:
        with ExitStack() as cleanup:
            try:
                outcome, gateway = _execute(job, backend, cleanup)
                # Model calls may outlive the container (a script can hang up on a stream and exit): stopping the
                # gateway waits for them, so that the ledger is complete before the job's totals are taken from it.
                gateway.stop()
                _finalize(job, outcome, gateway.report)
            except ContainerError as exc:
                logger.error("job %s: executor failed: %s", job.id, exc)
                _fail(job, exc.code, str(exc))
            except Exception as exc:
                logger.exception("job %s: internal error", job.id)
                _fail(job, "internal_error", f"The worker failed while running the job: {exc}")
    finally:
        job.refresh_from_db()
        results.publish(job)
        logger.info("job %s: %s (%s)", job.id, job.status, job.error_code or "ok")


def _execute(job: Job, backend: DockerBackend, cleanup: ExitStack) -> tuple[ContainerOutcome, JobGateway]:
    """Run the job on a warm container of its profile if the pool has one ready, else on a cold one. What must be
    undone afterwards (the gateway, the container, the folder) is pushed on `cleanup`."""
    pool = warm_pool.current()
    slot = pool.take(_profile(job)) if pool is not None else None
    if slot is not None:
        ran = _run_warm(job, backend, pool, slot, cleanup)
        if ran is not None:
            return ran
    workdir = settings.JOB_WORK_ROOT / str(job.id)
    cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
    _prepare_workdir(job, workdir)
    gateway = _start_gateway(job, workdir, cleanup)
    outcome = backend.run(_container_spec(job, workdir), should_cancel=_cancel_checker(job.id),
                          on_started=_recorder(job))
    return outcome, gateway


def _run_warm(job: Job, backend: DockerBackend, pool: WarmPool, slot: Slot,
              cleanup: ExitStack) -> tuple[ContainerOutcome, JobGateway] | None:
    """Run the job in `slot`; None when its container turned out not to be waiting (the job did not start)."""
    with ExitStack() as attempt:
        attempt.callback(pool.release, slot)
        _fill_workdir(job, slot.path)
        gateway = _start_gateway(job, slot.path, attempt)
        spec = _container_spec(job, slot.path)
        try:
            outcome = backend.supervise(
                slot.container_id, spec, should_cancel=_cancel_checker(job.id), on_started=_recorder(job),
                begin=lambda: slot.begin(spec.env, is_running=lambda: backend.is_running(slot.container_id)),
            )
        except (SlotUnavailable, ContainerGone) as exc:
            logger.warning("job %s: warm container %s unusable (%s); cold path", job.id, slot.container_id[:12], exc)
            return None
        slot.finished = True
        logger.info("job %s: ran on warm container %s", job.id, slot.container_id[:12])
        cleanup.push(attempt.pop_all())
        return outcome, gateway


def _start_gateway(job: Job, folder: Path, cleanup: ExitStack) -> JobGateway:
    gateway = JobGateway(_gateway_config(job), socket_dir=str(folder / "run")).start()
    cleanup.callback(gateway.stop)
    return gateway


def _recorder(job: Job):
    return lambda container_id: Job.objects.filter(pk=job.id).update(container_id=container_id)


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
    backend = backend or DockerBackend(base_url=settings.DOCKER_HOST or None)
    try:
        backend.remove_job_containers(str(job.pk))
        # A warm container was made before its job existed and carries no job label: it is found by its id.
        container_id = Job.objects.filter(pk=job.pk).values_list("container_id", flat=True).first()
        if container_id:
            backend.remove_container(container_id)
    except ContainerError as exc:
        logger.warning("job %s: could not remove its container: %s", job.pk, exc)
    results.publish(Job.objects.select_related("function_version").get(pk=job.pk))


def _prepare_workdir(job: Job, workdir: Path) -> None:
    """Lay out the job's code, input and socket folders, readable (not writable) by the container's user."""
    make_workdir_folders(workdir)
    _fill_workdir(job, workdir)


def make_workdir_folders(workdir: Path) -> None:
    """The folders a job container mounts: code, input, and run (the gateway's socket, a warm slot's FIFO)."""
    for folder in (workdir, workdir / "code", workdir / "input", workdir / "run"):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)


def _fill_workdir(job: Job, workdir: Path) -> None:
    code_dir, input_dir = workdir / "code", workdir / "input"
    extract_archive(bytes(job.function_version.archive), str(code_dir))
    for root, dirs, files in os.walk(code_dir):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    payload = json.dumps(job.input_data)
    if len(payload.encode()) > settings.JOB_PAYLOAD_ENV_MAX_BYTES:
        (input_dir / "payload.json").write_text(payload, encoding="utf-8")
        (input_dir / "payload.json").chmod(0o644)


def _profile(job: Job) -> Profile:
    return Profile(image=settings.JOB_RUNTIME_IMAGE, memory_bytes=job.memory_mb * 1024 * 1024,
                   nano_cpus=int(settings.JOB_CPUS * 1_000_000_000), pids_limit=settings.JOB_PIDS_LIMIT,
                   tmpfs_mb=settings.JOB_TMPFS_MB)


def default_profile() -> Profile:
    """The profile of a job of a function with the default memory: the one a pool warms from the start."""
    return Profile(image=settings.JOB_RUNTIME_IMAGE, memory_bytes=settings.JOB_DEFAULT_MEMORY_MB * 1024 * 1024,
                   nano_cpus=int(settings.JOB_CPUS * 1_000_000_000), pids_limit=settings.JOB_PIDS_LIMIT,
                   tmpfs_mb=settings.JOB_TMPFS_MB)


def _container_spec(job: Job, workdir: Path) -> ContainerSpec:
    env = {key: str(value) for key, value in (job.function.env or {}).items() if key not in RESERVED_ENV}
    env.update({
        "JOB_ID": str(job.id),
        "FUNCTION_ID": str(job.function_id),
        "LLM_MODEL": job.model_id,
        "AI_ENDPOINT": f"unix://{CONTAINER_SOCKET_DIR}/gateway.sock",
        "JOB_GATEWAY": f"unix://{CONTAINER_SOCKET_DIR}/gateway.sock",
        "OUTPUT_DIR": CONTAINER_OUTPUT_DIR,
        "CODE_DIR": CONTAINER_CODE_DIR,
        "PYTHONPATH": CONTAINER_SDK_DIR,
        "HOME": "/tmp",
    })
    with_input = (workdir / "input" / "payload.json").exists()
    if with_input:
        env["PAYLOAD_FILE"] = CONTAINER_INPUT_FILE
    else:
        env["PAYLOAD"] = json.dumps(job.input_data)
    return hardened_spec(_profile(job), workdir, job_id=str(job.id), env=env, with_input=with_input,
                          command=["python3", "-B", f"{CONTAINER_SDK_DIR}/runner.py"],
                          timeout_seconds=job.timeout_seconds)


def warm_spec(profile: Profile, slot: Path) -> ContainerSpec:
    """A pool container of `profile` in the slot folder `slot`: its runtime waits there for a job's environment."""
    return hardened_spec(profile, slot, job_id="", env={"PYTHONPATH": CONTAINER_SDK_DIR, "HOME": "/tmp"},
                          with_input=True, command=["python3", "-B", f"{CONTAINER_SDK_DIR}/warm.py"],
                          timeout_seconds=0)


def hardened_spec(profile: Profile, workdir: Path, *, job_id: str, env: dict[str, str], with_input: bool,
                   command: list[str], timeout_seconds: float) -> ContainerSpec:
    binds = {
        str(workdir / "code"): {"bind": CONTAINER_CODE_DIR, "mode": "ro"},
        str(SDK_DIR): {"bind": CONTAINER_SDK_DIR, "mode": "ro"},
        str(workdir / "run"): {"bind": CONTAINER_SOCKET_DIR, "mode": "ro"},
    }
    if with_input:
        binds[str(workdir / "input")] = {"bind": "/job/input", "mode": "ro"}
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


def _gateway_config(job: Job) -> GatewayConfig:
    """What the job's gateway allows: the job's model on the node it was routed to, and the function's other
    allowed models on theirs."""
    routes: dict[str, ModelRoute] = {}
    own_node = node_named(job.node) or route_model(job.model_id)
    routes[job.model_id] = ModelRoute(job.model_id, own_node.name, own_node.kind, own_node.url)
    for model_id in job.function.allowed_models or []:
        if model_id not in routes:
            try:
                node = route_model(model_id)
            except DomainError:  # not served now: the gateway refuses calls to it as model_not_allowed
                continue
            routes[model_id] = ModelRoute(node.model_id or model_id, node.name, node.kind, node.url)
    return GatewayConfig(
        job_id=str(job.id), default_model=job.model_id, routes=routes, budget=job.token_budget,
        max_output_tokens=settings.AI_MAX_OUTPUT_TOKENS, call_timeout=settings.AI_CALL_TIMEOUT,
        max_body_bytes=settings.GATEWAY_MAX_BODY_BYTES, max_concurrent_calls=settings.GATEWAY_MAX_CONCURRENT_CALLS,
        result_limit=settings.JOB_RESULT_MAX_BYTES,
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


def _finalize(job: Job, outcome: ContainerOutcome, report: ResultReport) -> None:
    script_error = ""
    if report.error:
        script_error = f"{report.error.get('type', 'Error')}: {report.error.get('message', '')}"
    verdict = interpret_exit(
        exit_code=outcome.exit_code, oom_killed=outcome.oom_killed, timed_out=outcome.timed_out,
        cancelled=outcome.cancelled, timeout_seconds=job.timeout_seconds, memory_mb=job.memory_mb,
        script_error=script_error,
    )
    status, error_code, message = verdict.status, verdict.error_code, verdict.message
    if status == JobStatus.SUCCEEDED and report.rejected_code:
        status, error_code = JobStatus.FAILED, report.rejected_code
        message = f"The result is larger than {settings.JOB_RESULT_MAX_BYTES} bytes."
    peaks = [p for p in (outcome.peak_memory_bytes, report.peak_memory_bytes) if p]
    fields: dict[str, Any] = {
        "exit_code": outcome.exit_code,
        "stdout": _text(outcome.stdout),
        "stderr": _text(outcome.stderr),
        "stdout_truncated": outcome.stdout_truncated,
        "stderr_truncated": outcome.stderr_truncated,
        "result": report.result if status == JobStatus.SUCCEEDED else None,
        "duration_ms": outcome.duration_ms,
        "peak_memory_bytes": max(peaks) if peaks else None,
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
