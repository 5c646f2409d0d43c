"""The ledger: one `LLMCall` row per model call, priced when it is recorded, added to its job's totals, spent from
its job's hold, added to the daily roll-ups, receipted (jobs.metering.receipts) and added to the usage export (when it
is on) in the same transaction; and the ledger's side of the roll-ups' rebuild (billing.rebuild)."""
import functools
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection, connections, transaction
from django.db.models import QuerySet
from django.db.models import Count, DecimalField, Exists, F, OuterRef, Q, Sum, Value
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from billing import job_money
from billing.models import Hold
from billing.pricing import job_cost_increments, priced_call
from billing.rebuild import RollupSources
from billing.rollups import add_call_to_rollups
from core import metrics
from core.database import outlasting_outages
from core.increments import add_to
from core.ranges import created_in_days
from nodeclient import Usage
from outbound import export

from ..models import METERED, Job, LLMCall, LLMCallStatus
from ..usage_export import call_usage
from .receipts import call_receipt

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4096)
def job_facts(job_id: Any) -> tuple[int, Any, bool, int]:
    """A job's owner, function, whether a quota holds its worst case (a hold is made at admission and deleted at
    the job's end, after its last call) and its function version's number: read once per job and process, not once
    per call."""
    return (Job.objects.filter(pk=job_id).annotate(held=Exists(Hold.objects.filter(job_id=OuterRef("pk"))))
            .values_list("owner_id", "function_id", "held", "function_version__number").get())


@dataclass(frozen=True)
class CallTrace:
    """What a call's receipt says besides its ledger row: when the gateway started and ended it, and the SHA-256 of
    the request it forwarded and of the text it delivered (jobs.metering.receipts.request_digest); None where
    unknown (a call recorded by hand)."""

    started_at: datetime | None = None
    ended_at: datetime | None = None
    request_sha256: str | None = None
    delivered_sha256: str | None = None


def record_call(*, job_id: str, **fields: Any) -> LLMCall:
    """Write one ledger row (`_write_call`), waiting up to JOB_DATABASE_WAIT_SECONDS for a database that is down: the
    call was made and must be billed. Written once: a try whose commit went through unanswered is found by its job
    and its time, fixed before the first try."""
    at = timezone.now()
    return outlasting_outages(lambda: _write_call(job_id=job_id, now=at, **fields), what=f"job {job_id}: a ledger row",
                              seconds=settings.JOB_DATABASE_WAIT_SECONDS,
                              done=lambda: LLMCall.objects.filter(job_id=job_id, created_at=at).first())


def _write_call(*, job_id: str, now: datetime, model_id: str, node: str, endpoint: str, streamed: bool,
                usage: Usage | None, max_tokens: int | None, done_reason: str | None, duration_ms: int,
                node_duration_ms: float | None, error_code: str = "", error_message: str = "", estimated: bool = False,
                recount: dict[str, Any] | None = None, trace: CallTrace = CallTrace()) -> LLMCall:
    """Write one ledger row and add it to the job's running totals (in place, never read-modify-write).

    `usage` is what the node reported, or with `estimated` what the gateway counted in its place; both are billed.
    `recount` keeps what an estimate that is not exact can be counted again from (jobs.metering.reconcile).
    Returns the row, with its receipt (jobs.metering.receipts) as `receipt`.

    Called from a job's `LedgerWriter` thread, which closes its database connection when the job ends.
    """
    close_old_connections()
    known = usage is not None and usage.known
    # Priced before the transaction opens: on SQLite a transaction that reads before it writes can fail to get the
    # write lock. The cost is fixed here, at the price in force now, and never recomputed.
    price, cost = priced_call(model_id=model_id, prompt_tokens=usage.prompt_tokens if known else None,
                              completion_tokens=usage.completion_tokens if known else None, at=now)
    with transaction.atomic():  # the ledger row, the job's totals and the day's roll-up commit together
        call = LLMCall.objects.create(
            job_id=job_id, model_id=model_id, node=node, endpoint=endpoint, streamed=streamed,
            status=LLMCallStatus.ERROR if error_code else LLMCallStatus.OK,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None, estimated=known and estimated,
            max_tokens_granted=max_tokens, done_reason=done_reason or "", duration_ms=duration_ms,
            node_duration_ms=round(node_duration_ms) if node_duration_ms is not None else None,
            error_code=error_code, error_message=error_message[:2000], cost=cost, created_at=now,
            recount=recount if known and estimated else None,
        )
        totals = {"llm_calls": 1, **job_cost_increments(cost)}
        if known:
            totals.update(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
            if estimated:
                totals["estimated_calls"] = 1
        else:
            totals["unmetered_calls"] = 1
        add_to(Job, {"id": job_id}, totals)
        owner_id, function_id, held, version = job_facts(job_id)
        if held:
            job_money.spend(job_id=job_id, cost=cost,
                            tokens=usage.prompt_tokens + usage.completion_tokens if known else None)
        add_call_to_rollups(call, owner_id=owner_id, function_id=function_id)
        call.receipt = call_receipt(call, owner_id=owner_id, function_id=function_id, version=version, price=price,
                                    started_at=trace.started_at or now - timedelta(milliseconds=duration_ms),
                                    ended_at=trace.ended_at or now, request_sha256=trace.request_sha256,
                                    delivered_sha256=trace.delivered_sha256)
        export.record(lambda: call_usage(call, owner_id=owner_id, function_id=function_id))
    metrics.model_call(model=model_id, node=node, error_code=error_code,
                       prompt_tokens=call.prompt_tokens, completion_tokens=call.completion_tokens,
                       duration_ms=duration_ms, node_duration_ms=node_duration_ms)
    logger.info("job %s: %s call to %s on %s: %s prompt + %s completion tokens%s%s", job_id, endpoint, model_id,
                node, call.prompt_tokens, call.completion_tokens, " (estimated)" if call.estimated else "",
                f" ({error_code})" if error_code else "")
    return call


class LedgerWriter:
    """Writes one job's ledger rows, in the order they come, on a thread of its own that keeps one database
    connection for the job's life: a call's answer never waits for its row, and a row does not pay for a new
    connection (the gateway's handler threads close theirs after each connection, so writing there would open one
    per call: on SQLite that alone costs about as much as the row's writes).

    `write(record)` queues one row's writing (`record` logs its own failures); `close(timeout)` waits for the rows
    queued so far and ends the thread. A row queued after `close` is written on the caller's thread, so that a call
    that outlived its job's drain is still recorded.
    """

    def __init__(self, job_id: str):
        self.job_id = job_id
        self._queue: deque[Callable[[], None]] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def write(self, record: Callable[[], None]) -> None:
        with self._changed:
            if not self._closed:
                self._queue.append(record)
                if self._thread is None:  # started by the first call: a job that calls no model opens nothing
                    self._thread = threading.Thread(target=self._run, name=f"ledger-{self.job_id[:8]}", daemon=True)
                    self._thread.start()
                self._changed.notify()
                return
        record()

    def close(self, timeout: float) -> None:
        """Wait at most `timeout` seconds for the queued rows to be written (the rest are written when they can)."""
        with self._changed:
            self._closed = True
            self._changed.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("job %s: ledger rows still being written after %.0f s", self.job_id, timeout)

    def _run(self) -> None:
        try:
            while True:
                with self._changed:
                    while not self._queue and not self._closed:
                        self._changed.wait()
                    if not self._queue:
                        return
                    record = self._queue.popleft()
                try:
                    record()
                except Exception:  # the thread must outlive one bad row: the job's other rows still need it
                    logger.exception("job %s: writing a ledger row failed", self.job_id)
        finally:
            connections.close_all()


def ledger_totals(job_id: str) -> dict[str, int]:
    """The job's totals recomputed from its ledger rows: what the Job row must agree with.

    Like `record_call`, it adds up only the calls whose two counts are both known (reported or estimated); the
    others are unmetered.
    """
    totals = LLMCall.objects.filter(job_id=job_id).aggregate(
        prompt=Sum("prompt_tokens", filter=METERED), completion=Sum("completion_tokens", filter=METERED),
        calls=Count("id"), unmetered=Count("id", filter=~METERED),
        estimated=Count("id", filter=METERED & Q(estimated=True)),
    )
    return {
        "prompt_tokens": totals["prompt"] or 0,
        "completion_tokens": totals["completion"] or 0,
        "llm_calls": totals["calls"],
        "unmetered_calls": totals["unmetered"],
        "estimated_calls": totals["estimated"],
    }


# Sums over ledger rows, named as Figures.from_sums reads them ("sum_" + the roll-up field).
LEDGER_SUMS = {
    "sum_calls": Count("id"),
    "sum_failed_calls": Count("id", filter=Q(status=LLMCallStatus.ERROR)),
    "sum_unmetered_calls": Count("id", filter=~METERED),
    "sum_estimated_calls": Count("id", filter=METERED & Q(estimated=True)),
    "sum_uncosted_calls": Count("id", filter=Q(cost__isnull=True)),
    "sum_prompt_tokens": Coalesce(Sum("prompt_tokens", filter=METERED), 0),
    "sum_completion_tokens": Coalesce(Sum("completion_tokens", filter=METERED), 0),
    "sum_cost": Coalesce(Sum("cost"), Value(Decimal(0)), output_field=DecimalField(max_digits=24, decimal_places=10)),
}


def lock_rollup_sources() -> None:
    """Keep new calls and jobs out until the transaction ends, so a rebuild sees them as they are at one moment.

    PostgreSQL: SHARE mode blocks writes to the ledger and to jobs (the gateway and the workers wait) but not
    reads. SQLite: the DELETE that follows takes the database's single write lock, which does the same; there a
    writer gives up after the connection's timeout (20 s), so a long rebuild is best done range by range.
    """
    if connection.vendor == "postgresql":
        tables = ", ".join(connection.ops.quote_name(model._meta.db_table) for model in (LLMCall, Job))
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {tables} IN SHARE MODE")


def calls_by_day(start: date | None, end: date | None) -> QuerySet:
    """The ledger's sums per (day, owner, function, model): a roll-up source (billing.rebuild)."""
    return (created_in_days(LLMCall.objects.all(), start, end).annotate(day=TruncDate("created_at"))
            .values("day", "model_id", owner_id=F("job__owner_id"), function_id=F("job__function_id"))
            .annotate(**LEDGER_SUMS).order_by())


def jobs_by_day(start: date | None, end: date | None) -> QuerySet:
    """The jobs created per (day, owner, function, model): a roll-up source (billing.rebuild)."""
    return (created_in_days(Job.objects.all(), start, end).annotate(day=TruncDate("created_at"))
            .values("day", "model_id", "owner_id", "function_id")
            .annotate(count=Count("id")).order_by())


ROLLUP_SOURCES = RollupSources(lock=lock_rollup_sources, calls=calls_by_day, jobs=jobs_by_day)
