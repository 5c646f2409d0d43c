"""A job's execution result: its one JSON shape, its copy in Redis, and waiting for it.

The Job row is the source of truth. When REDIS_URL is set, a finished job is also written to `result:{jobId}`
(with a TTL) and published on `job:{jobId}`, so that a synchronous request wakes at once instead of polling.
Without Redis (the embedded default, web and worker on one host), a waiting request listens on an abstract Unix
datagram socket named after the database and the job, and the worker sends it one datagram when the job ends.
"""
import hashlib
import json
import logging
import select
import socket
import time
from typing import Any

from django.conf import settings

from .models import Job

logger = logging.getLogger(__name__)


def execution_result(job: Job) -> dict[str, Any]:
    """The execution result contract (names kept from the original platform)."""
    return {
        "requestId": str(job.id),
        "jobId": str(job.id),
        "functionId": str(job.function_id),
        "functionVersion": job.function_version.number,
        "modelId": job.model_id,
        "node": job.node,
        "workerId": job.worker_id,
        "status": job.status,
        "errorCode": job.error_code,
        "errorMessage": job.error_message,
        "exitCode": job.exit_code,
        "stdout": job.stdout,
        "stderr": job.stderr,
        "stdoutTruncated": job.stdout_truncated,
        "stderrTruncated": job.stderr_truncated,
        "result": job.result,
        "durationMs": job.duration_ms,
        "peakMemoryBytes": job.peak_memory_bytes,
        "llm_token_count": job.llm_token_count,
        "promptTokens": job.prompt_tokens,
        "completionTokens": job.completion_tokens,
        "llmCalls": job.llm_calls,
        "unmeteredCalls": job.unmetered_calls,
        # Calls billed with counts the gateway estimated because the node did not report them (see README).
        "estimatedCalls": job.estimated_calls,
        # The sum of the calls' known costs, as a decimal string; uncostedCalls counts the calls it leaves out.
        "cost": format(job.cost, "f"),
        "uncostedCalls": job.uncosted_calls,
        "currency": settings.BILLING_CURRENCY,
        "tokenBudget": job.token_budget,
        "createdAt": job.created_at.isoformat(),
        "startedAt": job.started_at.isoformat() if job.started_at else None,
        "finishedAt": job.finished_at.isoformat() if job.finished_at else None,
        # The hash of the job receipt that closed the job's chain of receipts once it ended ("" until then).
        "receiptHash": job.receipt_hash,
    }


def _redis():
    if not settings.REDIS_URL:
        return None
    import redis

    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2)


def channel(job_id: Any) -> str:
    return f"job:{job_id}"


def _doorbell_address(job_id: Any) -> str:
    """An abstract socket name (no file; private to this host's network namespace, so job containers, which have
    none of it, cannot reach it) shared by every process on the same database."""
    database = settings.DATABASES["default"]
    scope = hashlib.sha256(
        f"{database['ENGINE']}|{database.get('HOST')}|{database.get('PORT')}|{database['NAME']}".encode()
    ).hexdigest()[:16]
    return f"\0infra-ainode-done-{scope}-{job_id}"


def _ring(job_id: Any) -> None:
    """Wake a request on this host that waits for the job; nobody may be waiting, which is fine."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        try:
            sender.sendto(b"done", _doorbell_address(job_id))
        except OSError:
            pass


def _listen(job_id: Any) -> socket.socket | None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        listener.bind(_doorbell_address(job_id))
    except OSError:  # someone else waits on this job already: they keep the doorbell, this one re-reads the row
        listener.close()
        return None
    return listener


def publish(job: Job) -> None:
    """Announce a finished job: its waiter on this host is woken, and its result copied to Redis if configured.
    Redis is a convenience: its failure never fails the job."""
    _ring(job.id)
    client = _redis()
    if client is None:
        return
    payload = json.dumps(execution_result(job))
    try:
        client.set(f"result:{job.id}", payload, ex=settings.RESULT_TTL_SECONDS)
        client.publish(channel(job.id), payload)
    except Exception as exc:  # redis-py raises many types; none of them may lose the job's result
        logger.warning("job %s: could not publish the result to Redis: %s", job.id, exc)


# A job that ran gets its job receipt just after its final status (jobs.runner): its waiter waits this long for it.
RECEIPT_WAIT_SECONDS = 5.0


def _settled(job: Job, ended_at: float) -> bool:
    """Whether an ended job is all there: one that ran also has its job receipt (or has waited for it long enough:
    a receipt that could not be written is verify_ledger's to name, not the caller's to wait for)."""
    return bool(job.receipt_hash) or job.started_at is None or time.monotonic() - ended_at > RECEIPT_WAIT_SECONDS


def wait_for_job(job_id: Any, timeout: float) -> Job:
    """Wait up to `timeout` seconds for the job to finish (and, if it ran, for its job receipt); returns the job
    as it then is.

    With Redis, it subscribes before reading the row, so a result that lands between the read and the
    subscription cannot be missed; without Redis, it listens on the job's doorbell, also opened before the read.
    Either way it re-reads the row now and then, in case a notification was lost.
    """
    deadline = time.monotonic() + timeout
    client = _redis()
    pubsub = None
    doorbell = None
    if client is None:
        doorbell = _listen(job_id)
    else:
        try:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(channel(job_id))
        except Exception as exc:
            logger.warning("job %s: Redis unavailable, polling the database: %s", job_id, exc)
            pubsub = None
    ended_at: float | None = None
    try:
        while True:
            job = Job.objects.select_related("function_version").get(pk=job_id)
            remaining = deadline - time.monotonic()
            if job.is_terminal and ended_at is None:
                ended_at = time.monotonic()
            if remaining <= 0 or (ended_at is not None and _settled(job, ended_at)):
                return job
            if pubsub is not None:
                # A message means "look again"; the row is still what we answer from. The 1 s bound re-reads
                # the row now and then in case a publish was lost.
                pubsub.get_message(timeout=min(remaining, 1.0))
            elif doorbell is not None:
                # A worker on another host cannot ring: the 0.5 s bound is then the polling interval.
                if select.select([doorbell], [], [], min(remaining, 0.5))[0]:
                    doorbell.recv(64)
            else:
                time.sleep(min(remaining, 0.1))
    finally:
        if pubsub is not None:
            pubsub.close()
        if doorbell is not None:
            doorbell.close()
