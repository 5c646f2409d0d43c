"""Dependency layers on the web side: what a deploy asks for, what an admission checks, what a build's end does,
and the cleanup of layers nothing uses. The build itself is the worker's (jobs/sandbox/layers.py, task
`jobs.build_layer`); it calls `start_build`, then `finish_build` or `fail_build` here.

A layer is content-addressed: `layer_key` of the normalised requirements (a requirements.txt, or a node function's
package.json and lockfile: jobs.node_packages), the runtime and the runtime image. Deploys of the same
set, by any user, share one `DependencyLayer` row and so one build. A job of a version whose layer is still building
is admitted but held: it is sent to the broker when the build ends (`release_held_jobs`), or failed with
`dependency_build_failed` if the build fails. While the layer builds, an admission locks its row until the job
commits, and a build's end updates that row before it looks for held jobs: so the end sees every held job, and an
admission after it sees the layer ready.
"""
import hashlib
import logging
import time
from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from billing import job_money
from core.errors import Conflict

from . import events, relay_bell, results
from .dispatch import enqueue_job, enqueue_layer_build, fail_unqueued
from .endings import end_job
from .fairness import job_turns
from .models import DependencyLayer, DependencyLayerChunk, FunctionVersion, Job, JobStatus, LayerStatus, Runtime
from .node_packages import NodePackages
from .requirements import Requirements

logger = logging.getLogger(__name__)

# Part of every layer's key: bump it when what a build puts in a layer changes, and every set is built anew.
LAYER_FORMAT = "infra-ainode-layer-1"
LOG_MAX_CHARS = 64 * 1024
# How often a synchronous run looks whether the layer it waits for is ready.
WAIT_POLL_SECONDS = 0.25
# A build asked for this long ago that no worker has started is asked for again (its message may be lost).
UNSTARTED_BUILD_SECONDS = 120


def layer_key(requirements: Requirements | NodePackages, image: str, runtime: str = Runtime.PYTHON) -> str:
    return hashlib.sha256(f"{LAYER_FORMAT}\n{runtime}\n{image}\n{requirements.text}".encode()).hexdigest()


def layer_for(requirements: Requirements | NodePackages, runtime: str = Runtime.PYTHON) -> DependencyLayer | None:
    """The layer of `requirements` for `runtime` in JOB_RUNTIME_IMAGE (None for an empty set), for a deploy's
    transaction.

    A set no deploy asked for before gets a new layer; one whose last build failed is built again; either build is
    requested once the transaction commits. The row is updated (and so locked) here, so that a cleanup cannot remove
    it before the new version that uses it commits.
    """
    if not requirements:
        return None
    key = layer_key(requirements, settings.JOB_RUNTIME_IMAGE, runtime)
    while True:
        layer, created = DependencyLayer.objects.get_or_create(
            key=key, defaults={"requirements": requirements.text, "runtime": runtime,
                               "runtime_image": settings.JOB_RUNTIME_IMAGE})
        if created:
            _request_build(layer)
            return layer
        if DependencyLayer.objects.filter(pk=layer.pk).update(unused_since=None):
            break
        # Removed by the cleanup since get_or_create read it: make it again.
    if DependencyLayer.objects.filter(pk=layer.pk, status=LayerStatus.FAILED).update(
            status=LayerStatus.BUILDING, error_code="", log="", build_started_at=None, built_at=None):
        logger.info("layer %s: its last build failed; building again", layer.key[:12])
        _request_build(layer)
    layer.refresh_from_db()
    return layer


def _request_build(layer: DependencyLayer) -> None:
    transaction.on_commit(lambda: enqueue_layer_build(layer.pk))


# --- admission ----------------------------------------------------------------------------------------------------

def admission_hold(layer_id: int | None) -> bool:
    """Whether a job whose version has layer `layer_id` must be held until the build ends (True), or may be sent
    now (False). Call inside the admission's transaction. Raises Conflict `dependency_build_failed` when the
    layer's build failed."""
    if layer_id is None:
        return False
    if _status(DependencyLayer.objects.filter(pk=layer_id)) == LayerStatus.READY:
        return False  # ready is final: no lock needed
    # Locked until the job commits: the build's end waits for it, then finds the job among the held ones.
    return _status(DependencyLayer.objects.select_for_update().filter(pk=layer_id)) == LayerStatus.BUILDING


def _status(layers) -> str:
    row = layers.values_list("status", "log").first()
    if row is None or row[0] == LayerStatus.FAILED:
        raise Conflict("The function's dependencies failed to build; see its dependencies' log, fix "
                       "requirements.txt (or package.json) and deploy again." + (f"\n{_last_line(row[1])}" if row else ""),
                       code="dependency_build_failed")
    return row[0]


def wait_until_built(layer_id: int | None, *, timeout: float) -> float:
    """Wait up to `timeout` seconds for layer `layer_id` to be built (a synchronous run); returns the seconds
    waited. Raises Conflict `dependencies_building` when it is still building then, `dependency_build_failed` when
    the build failed."""
    started = time.monotonic()
    if layer_id is None:
        return 0.0
    while _status(DependencyLayer.objects.filter(pk=layer_id)) == LayerStatus.BUILDING:
        if time.monotonic() - started + WAIT_POLL_SECONDS > timeout:
            raise Conflict(f"The function's dependencies are still being built (more than the {timeout:g} s a "
                           f"synchronous run may wait); run it with x-async: true, or again once they are ready.",
                           code="dependencies_building")
        time.sleep(WAIT_POLL_SECONDS)
    return time.monotonic() - started


# --- the build's end --------------------------------------------------------------------------------------------

def start_build(layer_id: int) -> DependencyLayer | None:
    """Claim the build of layer `layer_id` for this worker; None when it is not building or another worker has
    started it (a redelivered message never builds twice)."""
    claimed = DependencyLayer.objects.filter(pk=layer_id, status=LayerStatus.BUILDING,
                                             build_started_at__isnull=True).update(build_started_at=timezone.now())
    return DependencyLayer.objects.get(pk=layer_id) if claimed else None


def abandon_build(layer_id: int) -> None:
    """Give up this worker's claim on a build that could not run (the engine was unreachable): the layers' sweep
    asks for it again."""
    DependencyLayer.objects.filter(pk=layer_id, status=LayerStatus.BUILDING).update(build_started_at=None)


def finish_build(layer: DependencyLayer, *, chunks: Iterable[bytes], log: str, **fields: object) -> bool:
    """Store the built layer (its gzipped tar in `chunks`) and mark it ready with `fields` (image_id, packages,
    modules, size_bytes, archive_bytes, archive_sha256); then send the jobs held for it. False when the layer was
    no longer building (the build was declared lost meanwhile): nothing is stored then."""
    with transaction.atomic():
        if not DependencyLayer.objects.select_for_update().filter(pk=layer.pk, status=LayerStatus.BUILDING).exists():
            return False
        DependencyLayerChunk.objects.filter(layer=layer).delete()
        DependencyLayerChunk.objects.bulk_create(
            DependencyLayerChunk(layer=layer, index=index, data=data) for index, data in enumerate(chunks))
        DependencyLayer.objects.filter(pk=layer.pk).update(
            status=LayerStatus.READY, log=cap_log(log), built_at=timezone.now(), **fields,
            build_seconds=(timezone.now() - layer.build_started_at).total_seconds())
    logger.info("layer %s: ready", layer.key[:12])
    release_held_jobs(layer.pk)
    return True


def fail_build(layer_id: int, *, code: str, log: str) -> None:
    """Mark layer `layer_id`'s build failed with error `code` and its `log`, and fail the jobs held for it."""
    if not DependencyLayer.objects.filter(pk=layer_id, status=LayerStatus.BUILDING).update(
            status=LayerStatus.FAILED, error_code=code, log=cap_log(log), built_at=timezone.now()):
        return
    logger.warning("layer %s: build failed (%s): %s", layer_id, code, _last_line(log))
    message = f"The function's dependencies failed to build ({code}): {_last_line(log)}"
    for job_id in _held(layer_id).values_list("pk", flat=True):
        if end_job(job_id, JobStatus.FAILED, error_code="dependency_build_failed", error_message=message[:2000],
                   finished_at=timezone.now()):
            job_money.release(job_id=job_id)  # it never ran
            job = Job.objects.select_related("function_version").get(pk=job_id)
            events.record_end(job)
            results.publish(job)


def release_held_jobs(layer_id: int) -> int:
    """Send the queued jobs of layer `layer_id`'s versions to the broker (a job sent twice runs once: the worker's
    claim is conditional); one the broker refuses fails with `queue_unavailable`. Returns how many were sent. With
    fair share on PostgreSQL they go back to the outbox instead, and the relays send them in their turn."""
    if job_turns.in_force():
        released = _held(layer_id).update(dispatched_at=None)
        relay_bell.ring()
        return released
    sent = []
    for job_id, queue in _held(layer_id).values_list("pk", "queue"):
        try:
            enqueue_job(job_id, queue)
            sent.append(job_id)
        except Exception as exc:  # the broker's client raises many types; each must fail the job visibly
            fail_unqueued(job_id, exc)
    # Sent now: the resend of jobs no worker took (jobs/outbox.py) counts from here, not from their admission.
    Job.objects.filter(pk__in=sent).update(dispatched_at=timezone.now())
    return len(sent)


def _held(layer_id: int):
    return Job.objects.filter(status=JobStatus.QUEUED, function_version__layer_id=layer_id).order_by("created_at")


def cap_log(log: str) -> str:
    """The end of a build's log: where pip and the installer say what went wrong."""
    if len(log) <= LOG_MAX_CHARS:
        return log
    return "[... the start of the log was cut ...]\n" + log[-LOG_MAX_CHARS:]


def _last_line(log: str) -> str:
    lines = [line for line in log.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


# --- cleanup ------------------------------------------------------------------------------------------------------

def sweep_layers() -> dict[str, int]:
    """The periodic look at layers: builds whose worker was lost are failed, builds nobody started are asked for
    again, and layers that nothing uses (no live function's current version, no queued or running job) for
    DEPENDENCY_LAYER_KEEP_SECONDS are removed. Returns what it did, by kind."""
    now = timezone.now()
    lost = DependencyLayer.objects.filter(
        status=LayerStatus.BUILDING,
        build_started_at__lt=now - timedelta(seconds=settings.DEPENDENCY_BUILD_TIMEOUT + UNSTARTED_BUILD_SECONDS))
    lost_ids = list(lost.values_list("pk", flat=True))
    for layer_id in lost_ids:
        fail_build(layer_id, code="dependency_build_failed",
                   log="The worker building these dependencies stopped before it finished; deploy again.")
    unstarted = list(DependencyLayer.objects.filter(
        status=LayerStatus.BUILDING, build_started_at__isnull=True,
        created_at__lt=now - timedelta(seconds=UNSTARTED_BUILD_SECONDS)).values_list("pk", flat=True))
    for layer_id in unstarted:
        enqueue_layer_build(layer_id)
    return {"lost": len(lost_ids), "asked_again": len(unstarted), "removed": _remove_unused(now)}


def _used() -> Q:
    current = FunctionVersion.objects.filter(function__deleted_at__isnull=True, number=F("function__version"),
                                             layer__isnull=False).values("layer_id")
    active = Job.objects.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING],
                                function_version__layer__isnull=False).values("function_version__layer_id")
    return Q(pk__in=current) | Q(pk__in=active)


def _remove_unused(now) -> int:
    DependencyLayer.objects.filter(_used(), unused_since__isnull=False).update(unused_since=None)
    DependencyLayer.objects.exclude(_used()).filter(unused_since__isnull=True).exclude(
        status=LayerStatus.BUILDING).update(unused_since=now)
    keep = now - timedelta(seconds=settings.DEPENDENCY_LAYER_KEEP_SECONDS)
    removed = 0
    for layer_id in DependencyLayer.objects.filter(unused_since__lt=keep).values_list("pk", flat=True):
        # Locked and judged again: a deploy that takes the layer meanwhile clears `unused_since` under the same lock.
        with transaction.atomic():
            doomed = (DependencyLayer.objects.select_for_update().filter(pk=layer_id, unused_since__lt=keep)
                      .exclude(_used()))
            if doomed.exists():
                DependencyLayer.objects.filter(pk=layer_id).delete()
                removed += 1
                logger.info("layer %s: unused since before %s; removed", layer_id, keep.isoformat())
    return removed
