"""What receipts cost: the gateway's added latency per call with receipts on and off, and verify_ledger's rate.

    .venv/bin/python bench/receipts.py latency [--calls 100] [--node-url URL] [--kind openai|ollama]
                                               [--database-url postgres://...]
    .venv/bin/python bench/receipts.py verify [--calls 1000000] [--calls-per-job 10]
                                              [--server postgres://postgres@127.0.0.1:5432/postgres]
                                              [--database-url postgres://.../kept]

latency: two real gateways (bench/gateway_latency.py's set-up: each in a process of its own, the ledger in a
throw-away SQLite database unless --database-url), one writing receipts and one whose ledger writes none (its
process alone has `call_receipt` replaced: receipts have no setting to turn them off), and the node called
directly. The same small call goes to the three in turn, one at a time (each gateway call's ledger row written,
untimed, before the next call), then back to back in blocks. It prints each series' median and 95th percentile,
and on against off: the receipts' own cost on a call's path.

verify: a fresh PostgreSQL database with --calls ledger rows in jobs of --calls-per-job calls, each with its signed
receipt and each job closed by its job receipt, written with COPY; then `verify_ledger` over all of it, timed. It
prints the rate, and where the time goes per row: the database's rows alone, the hashing and parsing alone, and
the signatures it checked.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from bench import gateway_latency as gateway_bench  # noqa: E402 - the checkout's root goes on the path first
from bench.dashboard import postgres_database  # noqa: E402

BLOCK = 10


# --- latency ------------------------------------------------------------------------------------------------------

def latency(args: argparse.Namespace) -> None:
    workdir = tempfile.mkdtemp(prefix="bench-receipts-")
    gateway_bench._setup_django(workdir, args.database_url)
    import http.client
    from urllib.parse import urlsplit

    from django.db import connection

    from jobs.metering import ledger

    model = gateway_bench._model_of(args.node_url, args.kind)
    gateways, through = {}, {}
    for name in ("on", "off"):
        folder = os.path.join(workdir, name)
        os.mkdir(folder)
        job_id = gateway_bench._job_row(model)
        kept = ledger.call_receipt
        if name == "off":  # only the forked gateway process writes no receipts; this process is left as it was
            ledger.call_receipt = lambda call, **facts: SimpleNamespace(seq=0, hash="")
        try:
            gateways[name] = gateway_bench._GatewayProcess(job_id, model, args.kind, args.node_url, folder)
        finally:
            ledger.call_receipt = kept
        through[name] = gateway_bench._Through(gateways[name].socket_path, job_id)
    node = urlsplit(args.node_url)
    direct = lambda: http.client.HTTPConnection(node.hostname, node.port, timeout=120)  # noqa: E731
    ways = {"direct": lambda path, body: gateway_bench._timed(direct, path, body), **through}
    print(f"node {args.node_url} (kind {args.kind}), model {model}, ledger on {connection.vendor}, "
          f"{args.calls} calls of {args.max_tokens} tokens each way")
    try:
        for stream in (False, True):
            label = "streamed" if stream else "non-streamed"
            path, body = gateway_bench._request(args.kind, model, args.max_tokens, stream)
            for call in ways.values():  # warm the node's prompt cache and every path
                for _ in range(3):
                    call(path, body)
            _settle(through)
            _one_at_a_time(label, ways, through, path, body, args.calls)
            _back_to_back(label, ways, through, path, body, args.calls)
    finally:
        for gateway in gateways.values():
            gateway.stop()
    try:
        _ledger_row_cost(model, args.calls)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _ledger_row_cost(model: str, calls: int) -> None:
    """What a ledger row costs its ledger thread with its receipt and without, written one after another here."""
    from jobs.metering import ledger
    from nodeclient import Usage

    job_id = gateway_bench._job_row(model)
    record = lambda: ledger.record_call(  # noqa: E731
        job_id=job_id, model_id=model, node="bench", endpoint="/v1/completions", streamed=False, usage=Usage(9, 2),
        max_tokens=2, done_reason="length", duration_ms=40, node_duration_ms=30.0)
    kept, times = ledger.call_receipt, {}
    for name in ("on", "off", "on", "off"):
        if name == "off":
            ledger.call_receipt = lambda call, **facts: SimpleNamespace(seq=0, hash="")
        began = time.perf_counter()
        for _ in range(calls):
            record()
        times.setdefault(name, []).append((time.perf_counter() - began) / calls * 1000)
        ledger.call_receipt = kept
    on, off = min(times["on"]), min(times["off"])
    print(f"{'a ledger row':30} on       {on:7.2f} ms   off {off:7.2f} ms   receipt {on - off:+7.2f} ms "
          f"(the ledger thread's time, off the answer's path)")


def _settle(through: dict) -> None:
    for way in through.values():
        way.settle()


def _one_at_a_time(label: str, ways: dict, through: dict, path: str, body: bytes, calls: int) -> None:
    times: dict[str, list[float]] = {name: [] for name in ways}
    order = list(ways)
    for number in range(calls):
        for name in order[number % 3:] + order[:number % 3]:  # each way goes first as often as the others
            times[name].append(ways[name](path, body))
            _settle(through)
    _report(f"{label}, one at a time", times)
    paired = [on - off for on, off in zip(times["on"], times["off"])]
    print(f"{label + ', one at a time':30} on-off   median {statistics.median(paired):+7.2f} ms   "
          f"p95 {gateway_bench._p95(paired):+7.2f} ms   (paired, call by call)")


def _back_to_back(label: str, ways: dict, through: dict, path: str, body: bytes, calls: int) -> None:
    times: dict[str, list[float]] = {name: [] for name in ways}
    while len(times["on"]) < calls:
        for name, call in ways.items():
            for _ in range(BLOCK):
                times[name].append(call(path, body))
            _settle(through)
    _report(f"{label}, back to back", times)


def _report(label: str, times: dict[str, list[float]]) -> None:
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"{label:30} {name:8} median {medians[name]:7.2f} ms   p95 {gateway_bench._p95(values):7.2f} ms")
    print(f"{label:30} receipts median {medians['on'] - medians['off']:+7.2f} ms   "
          f"p95 {gateway_bench._p95(times['on']) - gateway_bench._p95(times['off']):+7.2f} ms   (on - off)")


# --- verify_ledger's rate -----------------------------------------------------------------------------------------

def verify(args: argparse.Namespace) -> None:
    if args.database_url:  # a database seeded by an earlier run (or empty: seeded now), kept afterwards
        with tempfile.TemporaryDirectory() as folder:
            _verify_in(args, args.database_url, folder)
        return
    with postgres_database(args.server) as url, tempfile.TemporaryDirectory() as folder:
        _verify_in(args, url, folder)


def _verify_in(args: argparse.Namespace, url: str, folder: str) -> None:
    gateway_bench._setup_django(folder, url)
    from django.db import connection

    from jobs.metering.audit import verify_ledger
    from jobs.models import LLMCall

    if not LLMCall.objects.exists():
        began = time.monotonic()
        receipts = _seed(args.calls, args.calls_per_job)
        print(f"seeded {args.calls} calls in {args.calls // args.calls_per_job} jobs ({receipts} receipts) in "
              f"{time.monotonic() - began:.0f} s")
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")

    began = time.monotonic()
    audit = verify_ledger()
    seconds = time.monotonic() - began
    per_receipt = seconds / audit.receipts
    print(f"verify_ledger: {audit.receipts} receipts, {audit.signatures} signatures, {len(audit.findings)} "
          f"findings in {seconds:.1f} s = {audit.receipts / seconds:,.0f} receipts/s ({per_receipt * 1e6:.1f} us "
          f"per receipt; a million in {per_receipt * 1e6:.0f} s)")
    for finding in audit.findings[:5]:
        print("  ", finding)
    _where_the_time_goes(audit.receipts, audit.signatures)


def _seed(calls: int, per_job: int) -> int:
    """Jobs, their ledger rows and receipts, and the day's roll-up, as the ledger would have written them."""
    from django.contrib.auth.models import User
    from django.db import connection
    from django.utils import timezone

    from billing.models import ModelPrice, UsageDaily
    from billing.receipt_keys import publish, signing_key
    from jobs import services
    from jobs.metering.receipts import call_facts, closing_facts, link
    from jobs.models import Job, JobStatus, LLMCall

    owner = User.objects.create_user(username="bench")
    function = services.deploy_function(owner=owner, name="bench", code=b"def handler(event, context):\n    pass\n")
    price = ModelPrice.objects.create(model_id="bench-model", price_per_1k_prompt=Decimal("0.5"),
                                      price_per_1k_completion=Decimal("1.5"), effective_from=timezone.now()
                                      - timedelta(days=1))
    key = signing_key()
    publish(key)
    now = timezone.now()
    day = timezone.localdate(now)
    calls_out, receipts_out, jobs, totals = io.StringIO(), io.StringIO(), [], [0, 0, Decimal(0)]
    call_id = receipt_id = 0
    for _ in range(calls // per_job):
        job = Job(owner=owner, function=function, function_version=function.current_version, model_id="bench-model",
                  node="bench", queue="jobs", memory_mb=128, timeout_seconds=30, status=JobStatus.SUCCEEDED,
                  created_at=now, llm_calls=per_job)
        hashes, bodies, prev = [], [], "0" * 64
        for seq in range(1, per_job + 1):
            call_id += 1
            call = LLMCall(id=call_id, job=job, model_id="bench-model", node="bench", endpoint="/v1/chat/completions",
                           status="ok", prompt_tokens=20 + seq, completion_tokens=5 + seq % 7, duration_ms=40 + seq,
                           created_at=now)
            call.cost = price.cost_of(prompt_tokens=call.prompt_tokens, completion_tokens=call.completion_tokens)
            facts = call_facts(call, owner_id=owner.pk, function_id=function.pk, version=1, price=price,
                               started_at=now, ended_at=now, request_sha256=hashlib.sha256(b"r").hexdigest(),
                               delivered_sha256=hashlib.sha256(b"d").hexdigest())
            data, prev, signature = link(facts, kind="call", job_id=job.pk, seq=seq, prev=prev, key=key)
            receipt_id += 1
            receipts_out.write(_copy_line(receipt_id, job.pk, seq, "call", call_id, owner.pk, day, data.decode(), prev,
                                          key.key_id, signature, now))
            calls_out.write(_copy_line(call_id, job.pk, call.model_id, call.node, call.endpoint, "f", "ok",
                                       call.prompt_tokens, call.completion_tokens, "f", r"\N", "",
                                       call.duration_ms, r"\N", "", "", call.cost, r"\N", now))
            hashes.append(prev)
            bodies.append(json.loads(data))
            job.prompt_tokens += call.prompt_tokens
            job.completion_tokens += call.completion_tokens
            job.cost += call.cost
        facts = closing_facts(job, status=job.status, hashes=hashes, bodies=bodies, now=now)
        data, job.receipt_hash, signature = link(facts, kind="job", job_id=job.pk, seq=per_job + 1, prev=prev, key=key)
        job.receipt_head, job.receipt_seq = job.receipt_hash, per_job + 1
        receipt_id += 1
        receipts_out.write(_copy_line(receipt_id, job.pk, per_job + 1, "job", r"\N", owner.pk, day, data.decode(),
                                      job.receipt_hash, key.key_id, signature, now))
        jobs.append(job)
        totals = [totals[0] + job.prompt_tokens, totals[1] + job.completion_tokens, totals[2] + job.cost]
    Job.objects.bulk_create(jobs, batch_size=5000)
    UsageDaily.objects.create(day=day, owner=owner, function=function, model_id="bench-model",
                              calls=call_id, prompt_tokens=totals[0], completion_tokens=totals[1], cost=totals[2],
                              jobs=len(jobs))
    with connection.cursor() as cursor:
        _copy(cursor, LLMCall, ["id", "job_id", "model_id", "node", "endpoint", "streamed", "status", "prompt_tokens",
                                "completion_tokens", "estimated", "max_tokens_granted", "done_reason", "duration_ms",
                                "node_duration_ms", "error_code", "error_message", "cost", "recount", "created_at"],
              calls_out)
        from jobs.models import Receipt

        _copy(cursor, Receipt, ["id", "job_id", "seq", "kind", "call_id", "owner_id", "day", "body", "hash", "key_id",
                                "signature", "created_at"], receipts_out)
    return receipt_id


def _copy_line(*values: object) -> str:
    return "\t".join(str(value).replace("\\", "\\\\") if not str(value) == r"\N" else r"\N" for value in values) + "\n"


def _copy(cursor, model, columns: list[str], rows: io.StringIO) -> None:
    table = model._meta.db_table
    with cursor.cursor.copy(f'COPY "{table}" ({", ".join(columns)}) FROM STDIN') as copy:
        copy.write(rows.getvalue())
    cursor.execute(f"SELECT setval(pg_get_serial_sequence('\"{table}\"', 'id'), (SELECT max(id) FROM \"{table}\"))")


def _where_the_time_goes(receipts: int, signatures: int) -> None:
    """The parts of a receipt's check, each timed alone over the same rows."""
    from django.db import connection

    from billing.receipt_keys import public_keys, signature_holds
    from jobs.metering.audit import _receipts_with_rows

    began, bodies = time.monotonic(), []
    for number, row in enumerate(_receipts_with_rows(None)):
        if number < 20_000:
            bodies.append(row)
    fetch = time.monotonic() - began
    began = time.monotonic()
    for row in bodies:
        text = row[4]
        hashlib.sha256(text.encode()).hexdigest()
        json.loads(text)
    hashing = (time.monotonic() - began) / len(bodies)
    keys = public_keys()
    began = time.monotonic()
    for row in bodies[:2000]:
        signature_holds(keys, row[6], row[4].encode(), row[7])
    signing = (time.monotonic() - began) / 2000
    print(f"per receipt: the database's rows {fetch / receipts * 1e6:.1f} us, hashing and parsing "
          f"{hashing * 1e6:.1f} us, a signature {signing * 1e6:.0f} us (x {signatures} checked = "
          f"{signing * signatures:.1f} s; every one would be {signing * receipts:.0f} s); "
          f"{connection.vendor}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    timed = modes.add_parser("latency")
    timed.add_argument("--calls", type=int, default=100)
    timed.add_argument("--max-tokens", type=int, default=2)
    timed.add_argument("--node-url", default=os.environ.get("AI_NODE_URL", "http://127.0.0.1:8090"))
    timed.add_argument("--kind", choices=("openai", "ollama"), default=os.environ.get("AI_NODE_KIND", "openai"))
    timed.add_argument("--database-url")
    walked = modes.add_parser("verify")
    walked.add_argument("--calls", type=int, default=1_000_000)
    walked.add_argument("--calls-per-job", type=int, default=10)
    walked.add_argument("--server", default="postgres://postgres@127.0.0.1:5432/postgres",
                        help="where a fresh database is made for the run, and dropped after it")
    walked.add_argument("--database-url", help="a database to keep: seeded when empty, verified as it is")
    args = parser.parse_args()
    latency(args) if args.mode == "latency" else verify(args)


if __name__ == "__main__":
    main()
