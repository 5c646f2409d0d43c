"""A job's live events: what its owner sees while it runs, as Server-Sent Events.

Kinds, in the order they happen:
- `status`   {"status", ...}: queued (web), running (worker), then the terminal status.
- `queue`    {"phase": "sent", "queue", "waitedMs", "heldForFairnessMs"}: with fair share, when a relay sent the job
  to its queue's workers (jobs.fairness.job_turns).
- `stdout` / `stderr`  {"text", "truncated"}: whole lines of output, under the same cap as the Job row's.
- `llm_call` {"phase": "start" | "end", "model", "streamed", "endpoint", ...}: each model call's start and end; the
  end carries the tokens as the ledger recorded them (null when the node did not say) and `estimated`. Then
  {"phase": "receipt", "call", "seq", "receiptHash"} once the call's ledger row and receipt are written (after its
  answer went out, so it may come after the next call's start).
- `usage`    the job's running totals and what is left of its budget (the gateway's `/_job/usage` shape).
- `result`   the execution result (`GET /status/{id}`'s body); the stream ends with it.

Producers: the web process (`record_queued`, `record_end`), the relays (`record`), the worker (an `EventWriter`
per job, fed by the runner, the Docker backend's output callback and the gateway's event callback). Stores:
`store`. Listeners: `feed`.
"""
import logging
from typing import Any

from django.conf import settings

from ..models import Job
from ..results import execution_result
from .store import event_store
from .writer import EventWriter

logger = logging.getLogger(__name__)


def record(job_id: Any, events: list[tuple[str, dict[str, Any]]]) -> None:
    """Write `events` now (the web process's few events). A store that fails loses them; it fails nothing else."""
    try:
        event_store().append(str(job_id), events)
    except Exception:
        logger.warning("job %s: could not record events %s", job_id, [kind for kind, _ in events], exc_info=True)


def status_event(job: Job) -> tuple[str, dict[str, Any]]:
    return "status", {"status": job.status, "errorCode": job.error_code, "workerId": job.worker_id}


def record_queued(job: Job) -> None:
    """The first event of a new job, written in the transaction that creates it (jobs.services.submit_job): the
    admission writes its row, its roll-up and this event in one commit."""
    try:
        event_store().start(str(job.pk), [status_event(job)])
    except Exception:
        # Redis may fail alone; a database that fails here fails the admission's commit as well.
        logger.warning("job %s: could not record its queued event", job.pk, exc_info=True)


def end_events(job: Job) -> list[tuple[str, dict[str, Any]]]:
    """The last two events of a job: its terminal status, then its result (which ends every listener)."""
    return [status_event(job), ("result", execution_result(job))]


def record_end(job: Job) -> None:
    record(job.pk, end_events(job))


def writer_for(job_id: Any) -> EventWriter:
    """A started writer for one job's events on the worker."""
    return EventWriter(str(job_id), store=event_store(), flush_seconds=settings.JOB_EVENTS_FLUSH_SECONDS,
                       flush_bytes=settings.JOB_EVENTS_FLUSH_BYTES).start()


def prune_events() -> int:
    """Delete events older than JOB_EVENTS_TTL_SECONDS (Redis streams expire by themselves)."""
    from datetime import timedelta

    return event_store().prune(older_than=timedelta(seconds=settings.JOB_EVENTS_TTL_SECONDS))
