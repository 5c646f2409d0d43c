"""The operator's check of the ledger against its receipts (`manage.py verify_ledger`).

One pass over the receipts in chain order (job, seq), each joined with the ledger row it names, then one query for
ledger rows that no receipt names. For each receipt: its body must hash to its hash, follow the receipt before it
(`seq` without a gap, `prev` equal to that receipt's hash) and name what its row is; a call's ledger row must still
say what its receipt (and any correction after it) says. Signatures are checked where a chain is anchored: its job
receipt, which covers the hashes of every receipt before it, and whatever comes after that or ends an open chain
(`signatures="all"` checks each one). Then each job's totals and each daily roll-up must equal the sums of their
receipts. Each chain reports its first break only: after it, every later link disagrees too.
"""
import hashlib
import json
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Exists, OuterRef

from billing.models import UsageDaily
from billing.receipt_keys import public_keys, signature_holds
from core.ranges import created_in_days, day_start

from ..models import TERMINAL, Job, LLMCall, Receipt, ReceiptKind
from .receipts import GENESIS, chain_sums, instant, nanos

FETCH = 20_000
# What a call receipt says about its ledger row: (receipt field, row column).
CALL_FIELDS = (("model", "model_id"), ("node", "node"), ("endpoint", "endpoint"), ("status", "status"),
               ("errorCode", "error_code"), ("promptTokens", "prompt_tokens"),
               ("completionTokens", "completion_tokens"), ("estimated", "estimated"), ("amount", "cost"),
               ("durationMs", "duration_ms"), ("recordedAt", "created_at"), ("job", "job_id"))
FIELD_NAMES = tuple(name for name, _ in CALL_FIELDS)
ROW_COLUMNS = ("id", "job_id", "model_id", "node", "endpoint", "status", "error_code", "prompt_tokens",
               "completion_tokens", "estimated", "cost", "duration_ms", "created_at")
ZERO = timedelta(0)


@dataclass
class Finding:
    problem: str  # edited, deleted, inserted, reordered, forged, unclosed, mismatch
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.problem}: {self.where}: {self.detail}"


@dataclass
class Audit:
    receipts: int = 0
    signatures: int = 0
    jobs: int = 0
    findings: list[Finding] = field(default_factory=list)


@dataclass
class _Chain:
    job_id: str
    raw_id: Any = None  # the job's id as the database answers it
    seq: int = 0
    prev: str = GENESIS
    hashes: list[str] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    calls: dict[int, tuple[dict[str, Any], dict[str, Any] | None]] = field(default_factory=dict)
    closed: bool = False
    broken: bool = False
    last: tuple | None = None  # the last receipt whose signature is still to check: (key id, body, signature)


def verify_ledger(*, since: date | None = None, signatures: str = "anchors") -> Audit:
    """Walk the receipts of the jobs created from `since` on (all jobs without it) and return what disagrees."""
    audit = Audit()
    keys = public_keys()
    jobs = {str(row[0]): row[1:] for row in created_in_days(Job.objects.all(), since, None).values_list(
        "id", "prompt_tokens", "completion_tokens", "llm_calls", "unmetered_calls", "cost", "status", "started_at")}
    walked: set[str] = set()
    rollups: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    chain: _Chain | None = None
    for row in _receipts_with_rows(since):
        if chain is None or chain.raw_id != row[0]:
            if chain is not None:
                _end(chain, audit, keys, jobs.get(chain.job_id), rollups)
            chain = _Chain(_uuid_text(row[0]), row[0])
            walked.add(chain.job_id)
        audit.receipts += 1
        if not chain.broken:
            _link(chain, row, audit, keys, signatures)
    if chain is not None:
        _end(chain, audit, keys, jobs.get(chain.job_id), rollups)
    audit.jobs = len(jobs)
    _chains_gone(audit, jobs, walked)
    _unreceipted_calls(audit, since)
    _compare_rollups(audit, rollups, since)
    return audit


def _receipts_with_rows(since: date | None) -> Iterator[tuple]:
    quote = connection.ops.quote_name
    receipt, call, job = (quote(model._meta.db_table) for model in (Receipt, LLMCall, Job))
    columns = ", ".join(f"c.{quote(name)}" for name in ROW_COLUMNS)
    where, params = "", []
    if since is not None:
        start = day_start(since)
        where = f"WHERE r.{quote('job_id')} IN (SELECT {quote('id')} FROM {job} WHERE {quote('created_at')} >= %s)"
        params = [Job._meta.get_field("created_at").get_db_prep_value(start, connection)]
    sql = (f"SELECT r.{quote('job_id')}, r.{quote('seq')}, r.{quote('kind')}, r.{quote('call_id')}, r.{quote('body')}, "
           f"r.{quote('hash')}, r.{quote('key_id')}, r.{quote('signature')}, {columns} FROM {receipt} r "
           f"LEFT JOIN {call} c ON c.{quote('id')} = r.{quote('call_id')} {where} "
           f"ORDER BY r.{quote('job_id')}, r.{quote('seq')}")
    with connection.chunked_cursor() as cursor:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(FETCH):
            yield from rows


def _break(chain: _Chain, audit: Audit, problem: str, where: object, detail: str) -> None:
    audit.findings.append(Finding(problem, str(where), detail))
    chain.broken = True


def _link(chain: _Chain, row: tuple, audit: Audit, keys: dict, signatures: str) -> None:
    _, seq, kind, call_id, text, digest, key_id, signature = row[:8]
    where = _Where(seq, chain.job_id)
    data = text.encode()
    if hashlib.sha256(data).hexdigest() != digest:
        return _break(chain, audit, "edited", where, "its body no longer hashes to its hash")
    body = json.loads(text)
    if seq != chain.seq + 1:
        problem = "deleted" if seq > chain.seq + 1 else "inserted"
        return _break(chain, audit, problem, where, f"expected receipt {chain.seq + 1} of the chain here")
    if body.get("seq") != seq or body.get("job") != chain.job_id or body.get("kind") != kind:
        return _break(chain, audit, "reordered", where, f"its body says it is receipt {body.get('seq')} of job "
                                                        f"{body.get('job')}")
    if body.get("prev") != chain.prev:
        return _break(chain, audit, "reordered", where, "it does not follow the receipt before it (prev differs): "
                                                        "one was inserted, removed or moved")
    check_now = signatures == "all" or kind == ReceiptKind.JOB or chain.closed
    if check_now:
        audit.signatures += 1
        if not signature_holds(keys, key_id, data, signature):
            return _break(chain, audit, "forged", where, f"its signature does not verify with key {key_id}")
    if kind == ReceiptKind.JOB:
        if body["covers"] != chain.hashes or any(body[name] != value for name, value in
                                                 chain_sums(chain.bodies).items()):
            return _break(chain, audit, "forged", where, "the job receipt does not cover the receipts before it")
        chain.closed = True
    elif kind == ReceiptKind.CALL:
        chain.calls[call_id] = (body, _row(row[8:], chain))
    elif kind == ReceiptKind.CORRECTION and call_id in chain.calls:
        original, current = chain.calls[call_id]
        chain.calls[call_id] = ({**original, **body["now"]}, current)
    chain.seq, chain.prev = seq, digest
    chain.hashes.append(digest)
    chain.bodies.append(body)
    chain.last = None if check_now else (key_id, data, signature, where)


class _Where:
    """Where a receipt is, written out only when a problem is found there."""

    __slots__ = ("seq", "job_id")

    def __init__(self, seq: int, job_id: str):
        self.seq, self.job_id = seq, job_id

    def __str__(self) -> str:
        return f"receipt {self.seq} of job {self.job_id}"


def _row(values: tuple, chain: _Chain) -> tuple | None:
    """A ledger row as its receipt writes it, in CALL_FIELDS' order; None when the row is gone."""
    (call_id, job_id, model_id, node, endpoint, status, error_code, prompt, completion, estimated, cost, duration,
     created) = values
    if call_id is None:
        return None
    if isinstance(created, str):  # SQLite
        created = datetime.fromisoformat(created)
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    recorded = (created.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if created.utcoffset() == ZERO else instant(created))
    if cost is not None:
        cost = nanos(cost if isinstance(cost, Decimal) else Decimal(str(cost)))
    return (model_id, node, endpoint, status, error_code, prompt, completion, bool(estimated), cost, duration, recorded,
            chain.job_id if job_id == chain.raw_id else _uuid_text(job_id))


def _end(chain: _Chain, audit: Audit, keys: dict, job: tuple | None, rollups: dict) -> None:
    if not chain.broken and chain.last is not None:
        key_id, data, signature, where = chain.last
        audit.signatures += 1
        if not signature_holds(keys, key_id, data, signature):
            _break(chain, audit, "forged", where, f"its signature does not verify with key {key_id}")
    for call_id, (said, row) in sorted(chain.calls.items()):
        where = f"LLMCall {call_id} of job {chain.job_id}"
        if row is None:
            audit.findings.append(Finding("deleted", where, "its receipt names a ledger row that is gone"))
            continue
        told = tuple(said.get(name) for name in FIELD_NAMES)
        if told != row:
            changed = [name for name, value, kept in zip(FIELD_NAMES, told, row) if value != kept]
            audit.findings.append(Finding("edited", where, f"{', '.join(changed)} differ from its receipt"))
        if said.get("promptTokens") is not None and said.get("completionTokens") is not None:
            totals = rollups[(said["day"], said["user"], said["function"], said["model"])]
            totals[0] += 1
            totals[1] += said["promptTokens"]
            totals[2] += said["completionTokens"]
            totals[3] += said["amount"] or 0
        else:
            rollups[(said["day"], said["user"], said["function"], said["model"])][0] += 1
    if job is None:
        return
    if not chain.closed and job[5] in TERMINAL and not chain.broken:
        audit.findings.append(Finding("unclosed", f"job {chain.job_id}", "it ended but its chain has no job "
                                                                         "receipt"))
    _compare_job(chain, audit, job)


def _uuid_text(value: Any) -> str:
    """A uuid as receipts write it, from what the database answers (a UUID, or SQLite's 32 hex digits)."""
    return str(value if isinstance(value, uuid.UUID) else uuid.UUID(value))


def _compare_job(chain: _Chain, audit: Audit, job: tuple) -> None:
    if chain.broken:
        return
    sums = chain_sums(chain.bodies)
    prompt, completion, calls, unmetered, cost, _, _ = job
    figures = {"promptTokens": prompt, "completionTokens": completion, "calls": calls, "unmeteredCalls": unmetered,
               "amount": nanos(Decimal(cost))}
    changed = [name for name, value in figures.items() if sums[name] != value]
    if changed:
        audit.findings.append(Finding("mismatch", f"job {chain.job_id}", f"its {', '.join(changed)} no longer "
                                                                         f"match its receipts"))


def _chains_gone(audit: Audit, jobs: dict[str, tuple], walked: set[str]) -> None:
    """Jobs that have no receipt at all although they made calls, or ran and ended (a job cancelled while queued
    never had a chain)."""
    for job_id, (_, _, calls, _, _, status, started_at) in sorted(jobs.items()):
        if job_id not in walked and (calls or (status in TERMINAL and started_at is not None)):
            audit.findings.append(Finding("deleted", f"job {job_id}", f"its whole chain of receipts is gone "
                                                                      f"({calls} calls on its row)"))


def _unreceipted_calls(audit: Audit, since: date | None) -> None:
    calls = created_in_days(LLMCall.objects.all(), since, None) if since else LLMCall.objects.all()
    # NOT EXISTS, which PostgreSQL runs as an anti-join; NOT IN (a subquery) can become a scan per row.
    receipted = Receipt.objects.filter(kind=ReceiptKind.CALL, call_id=OuterRef("pk"))
    for call_id, job_id in calls.filter(~Exists(receipted)).order_by("pk").values_list("pk", "job_id"):
        audit.findings.append(Finding("inserted", f"LLMCall {call_id} of job {job_id}", "no receipt names it"))


def _compare_rollups(audit: Audit, sums: dict[tuple, list[int]], since: date | None) -> None:
    rollups = UsageDaily.objects.all() if since is None else UsageDaily.objects.filter(day__gte=since)
    seen = set()
    for day, owner, function, model, calls, prompt, completion, cost in rollups.values_list(
            "day", "owner_id", "function_id", "model_id", "calls", "prompt_tokens", "completion_tokens", "cost"):
        key = (day.isoformat(), owner, str(function), model)
        seen.add(key)
        if sums.get(key, [0, 0, 0, 0]) != [calls, prompt, completion, nanos(cost)]:
            audit.findings.append(Finding("mismatch", f"roll-up of {day} for user {owner}, function {function}, "
                                                      f"model {model}", "its figures no longer match the receipts"))
    for key in sorted(set(sums) - seen):
        if since is None or key[0] >= since.isoformat():
            audit.findings.append(Finding("mismatch", f"roll-up of {key[0]} for user {key[1]}, function {key[2]}, "
                                                      f"model {key[3]}", "it is missing"))
