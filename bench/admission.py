"""POST /run admission in one run on four set-ups and a baseline: what the web process spends on one admission.

    .venv/bin/python bench/admission.py [--setups original,embedded,sqs,sqs-direct,redis-direct] [--connections 20]
        [--seconds 20]
        [--single-seconds 5] [--workers 2] [--pg postgres://postgres@127.0.0.1:5432] [--moto 127.0.0.1:5055]
        [--redis redis://127.0.0.1:6379/13] [--rounds 1] [--show-sql]

The set-ups: `embedded`, the default that scripts/stack.sh runs (SQLite, kombu's filesystem broker, the web
process publishing each job); `sqs`, production's: PostgreSQL with the moto SQS server and the outbox, PostgreSQL's
default (the web process publishes nothing: a worker's relay sends the job, jobs/outbox.py); `sqs-direct`, the same
with JOB_DISPATCH=direct (the web process publishes); `redis-direct`, PostgreSQL with Redis as the broker, the web
process publishing. REDIS_URL is empty in all of them, so only the database, the broker and the dispatch differ.

The baseline, `original`, is the least an admission on SQS can do in the original platform's language:
bench/original_controller/server.mjs, a Node server that sends one SQS message per POST /run with the AWS SDK for
JavaScript (no database, no job record, one shared key), on the same moto and measured the same way. Each set-up's
CPU per admission is printed against it at the end: a CPU figure in ms is only comparable within one run on one
machine. It needs Node.js and npm; the bench installs the SDK with `npm ci` into that folder at its first run.

With --rounds N every set-up is measured N times, the set-ups taking turns (in the order of --setups, then
again), and the end gives each one's median and range, and the median of its ratios to the baseline of the same
round: on this shared machine one run's CPU per admission moves by a fifth from one minute to the next.

It needs wrk (`apt-get install -y wrk`) and, for the set-ups that use them, PostgreSQL, moto_server and Redis as
`bash scripts/services.sh postgres moto redis` starts them; it names the first one missing in one line and stops. It
starts the rest itself, per set-up: a fresh database (a temporary SQLite file, or a throw-away PostgreSQL database)
and VAR_DIR, seeded through the services with a user, a key, a function and a catalogue entry (no node is asked),
and gunicorn from the checkout's .venv as scripts/stack.sh starts it (infra_ainode/gunicorn.conf.py, --workers
workers, PROMETHEUS_MULTIPROC_DIR). No Celery worker runs: the queue only grows, except on SQS, where a thread of the
bench receives and deletes the messages as workers would (moto's SendMessage slows as its queue grows).
For each it prints:

- the SQL of one admission: a Django test Client `POST /run` (x-async) in the bench's own process, on the
  set-up's database and broker, after a warm-up request, under CaptureQueriesContext; the data statements apart
  from transaction control (BEGIN, COMMIT, SAVEPOINT, RELEASE; Django logs the BEGIN and COMMIT it asks of the
  driver, which on PostgreSQL are round trips of their own too); then the same for a user whose quota limits their
  tokens and concurrent jobs (not the user wrk sends as);
- where an admission's CPU goes, apart from the web server and the load: in the bench's own process, back to back,
  the CPU per admission through Django's WSGI handler (middleware, DRF, the view), and for the work alone (the
  key's and the function's look-ups and `submit_job_once`, called directly: the rows and the publish), and for the
  publish alone (`jobs.dispatch.enqueue_job`); with the outbox, instead of the publish, what the relay spends per
  job it sends (`jobs.outbox.dispatch_waiting`, in batches of 10 as under load; a worker's CPU, not the web's);
- the p50 latency over one connection (wrk, --single-seconds);
- admissions/s, p50 and p99 under wrk with --connections connections for --seconds seconds (x-async: true);
- the web CPU per admission under that load: utime + stime of the gunicorn master and every worker (the baseline's
  one Node process), children included (/proc/PID/stat), from just before to just after that wrk run, over the
  number of 202s;
- whether every 202 left a job row (each jobId that wrk received in its warm-up and two runs, looked up).

Figures only; never part of the test run.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.dashboard import postgres_database  # noqa: E402 - the checkout's root goes on the path first
from bench.jobs import cpu_seconds  # noqa: E402

GUNICORN = REPO_ROOT / ".venv" / "bin" / "gunicorn"


@dataclass(frozen=True)
class Setup:
    description: str
    # What it needs here beside wrk and the checkout, of: postgres, moto, redis, node.
    needs: frozenset[str]
    # The job broker (filesystem, sqs or redis) and JOB_DISPATCH of the web process; None for the baseline.
    broker: str | None = None
    dispatch: str | None = None


SETUPS = {
    "original": Setup("the baseline: one SQS message per admission from Node (bench/original_controller)",
                      frozenset({"moto", "node"})),
    "embedded": Setup("SQLite + filesystem broker, direct", frozenset(), "filesystem", "direct"),
    "sqs": Setup("PostgreSQL + SQS (moto), the outbox", frozenset({"postgres", "moto"}), "sqs", "outbox"),
    "sqs-direct": Setup("PostgreSQL + SQS (moto), JOB_DISPATCH=direct", frozenset({"postgres", "moto"}), "sqs",
                        "direct"),
    "redis-direct": Setup("PostgreSQL + Redis, JOB_DISPATCH=direct", frozenset({"postgres", "redis"}), "redis",
                          "direct"),
}
ORIGINAL = REPO_ROOT / "bench" / "original_controller"
# moto takes any credentials; the baseline's queue is made in the region the SQS set-up uses.
MOTO_CREDENTIALS = {"AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
# Statements that open, close or mark a transaction rather than read or write data.
# Where a set-up's child process leaves its CPU per admission for the parent.
CPU_FIGURE = "cpu-per-admission-ms"
TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")
# The model of every admission the bench makes; seed() puts it in the catalogue.
MODEL = "bench-model"

# Each wrk thread writes the status of every answer, and the jobId of every 202, to a file of its own: the bench
# counts the 202s itself and looks each job up.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '%(body)s'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
wrk.headers["x-async"] = "true"
local threads = 0
function setup(thread)
    thread:set("number", threads)
    threads = threads + 1
end
function init(args)
    answers = io.open("%(folder)s/answers-" .. number, "w")
end
function response(status, headers, body)
    answers:write(status, " ", body:match('"jobId"%%s*:%%s*"([^"]+)"') or "-", "\\n")
    answers:flush()
end
"""


# --- the parent: check the services, then one child process per set-up -----------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated, of: " + ", ".join(SETUPS))
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=20, help="the measured wrk run")
    parser.add_argument("--single-seconds", type=int, default=5, help="the one-connection wrk run")
    parser.add_argument("--rounds", type=int, default=1, help="measure every set-up this many times, in turns")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (scripts/stack.sh's default: 2)")
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--moto", default="127.0.0.1:5055")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--show-sql", action="store_true", help="print the statements of the counted admission")
    parser.add_argument("--child", choices=SETUPS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    setups = [name.strip() for name in args.setups.split(",") if name.strip()]
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if unknown := set(setups) - set(SETUPS):
        parser.error(f"unknown set-up(s): {', '.join(sorted(unknown))}")
    if missing := missing_requirement(args, setups):
        print(f"bench/admission.py: {missing}", file=sys.stderr)
        return 1
    print(f"{os.cpu_count()} CPUs; gunicorn with {args.workers} workers; wrk {args.connections} connections for "
          f"{args.seconds} s; {args.rounds} round(s)")
    # Milliseconds of CPU per admission, by set-up, one figure per round. The set-ups take turns within a round, so
    # that a change in the machine's speed during the run falls on all of them alike.
    cpu: dict[str, list[float]] = {name: [] for name in setups}
    for round_number in range(1, args.rounds + 1):
        for name in setups:
            load = " ".join(f"{value:.2f}" for value in os.getloadavg())
            print(f"\n{name}: {SETUPS[name].description} (round {round_number}; load average {load})", flush=True)
            figure = run_setup(args, name)
            if figure is None:
                print(f"  {name}: the measurement failed (see above)")
                return 1
            cpu[name].append(figure)
    print_summary(cpu)
    return 0


def run_setup(args: argparse.Namespace, name: str) -> float | None:
    """One set-up measured from scratch (a fresh database, queue and VAR_DIR): its CPU per admission in ms."""
    with tempfile.TemporaryDirectory(prefix="bench-admission-") as var_dir:
        if name == "original":
            return run_original(args, Path(var_dir))
        if name == "embedded":
            return run_child(args, name, f"sqlite:///{var_dir}/db.sqlite3", var_dir)
        with postgres_database(f"{args.pg}/postgres") as database_url:
            return run_child(args, name, database_url, var_dir)


def print_summary(cpu: dict[str, list[float]]) -> None:
    """Each set-up's CPU per admission over the rounds (median, and the range when there are several) and, with the
    baseline measured, the median of its ratios to the baseline of the same round."""
    several = len(next(iter(cpu.values()))) > 1  # every set-up has a figure per round
    print("\nweb CPU per admission" + (" (median of the rounds, lowest to highest)" if several else "") + ":")
    for name, figures in cpu.items():
        spread = f" ({min(figures):.2f} to {max(figures):.2f})" if several else ""
        ratio = ""
        if "original" in cpu and name != "original":
            ratios = [figure / baseline for figure, baseline in zip(figures, cpu["original"])]
            ratio = f"; {statistics.median(ratios):.2f}x the baseline's of the same round" + (
                f" ({min(ratios):.2f}x to {max(ratios):.2f}x)" if several else "")
        print(f"  {name}: {statistics.median(figures):.2f} ms{spread}{ratio}")


def missing_requirement(args: argparse.Namespace, setups: list[str]) -> str | None:
    """One line naming the first thing the chosen set-ups need that is not here, or None."""
    if not shutil.which("wrk"):
        return "wrk is not installed: apt-get install -y wrk"
    needs = set().union(*(SETUPS[name].needs for name in setups))
    if "node" in needs and not (shutil.which("node") and shutil.which("npm")):
        return "the original set-up needs Node.js and npm: apt-get install -y nodejs npm (or leave it out: --setups)"
    start = "start it with: bash scripts/services.sh"
    if "postgres" in needs:
        import psycopg

        try:
            psycopg.connect(f"{args.pg}/postgres".replace("postgres://", "postgresql://"), connect_timeout=3).close()
        except psycopg.Error as exc:
            return f"PostgreSQL does not answer at {args.pg} ({str(exc).splitlines()[0]}); {start} postgres"
    host, _, port = args.moto.rpartition(":")
    if "moto" in needs and not answers(host, int(port)):
        return f"the moto SQS server does not answer on {args.moto}; {start} moto"
    redis = urlsplit(args.redis)
    if "redis" in needs and not answers(redis.hostname or "127.0.0.1", redis.port or 6379, b"PING\r\n"):
        return f"Redis does not answer on {redis.netloc}; {start} redis"
    return None


def answers(host: str, port: int, hello: bytes = b"") -> bool:
    try:
        with socket.create_connection((host, port), timeout=3) as connection:
            if hello:
                connection.sendall(hello)
                return connection.recv(16).startswith(b"+PONG")
            return True
    except OSError:
        return False


def run_original(args: argparse.Namespace, folder: Path) -> float | None:
    """Measure the baseline on a queue of its own on moto; its CPU per admission in ms."""
    if not (ORIGINAL / "node_modules").is_dir():
        installed = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=ORIGINAL)
        if installed.returncode != 0:
            print("  npm ci failed in bench/original_controller", file=sys.stderr)
            return None
    import boto3

    client = boto3.client("sqs", endpoint_url=f"http://{args.moto}", region_name=MOTO_CREDENTIALS["AWS_REGION"],
                          aws_access_key_id=MOTO_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=MOTO_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    queue_url = client.create_queue(QueueName=f"bench-original-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    key = secrets.token_urlsafe(24)
    try:
        with (OriginalController(folder, moto=args.moto, queue_url=queue_url, key=key) as web,
              QueueDrain(contextlib.nullcontext((client, queue_url)))):
            runs, cpu = measure(args, web.url, web.pid, folder, key=key, function_id=str(uuid.uuid4()))
    finally:
        client.delete_queue(QueueUrl=queue_url)
    print(f"  all three wrk runs: {sum(len(result.job_ids) for result in runs)} answered 202 (the baseline keeps no "
          f"job rows){refusals(runs)}")
    return cpu


def run_child(args: argparse.Namespace, name: str, database_url: str, var_dir: str) -> float | None:
    """Measure set-up `name` in a process of its own (Django reads its settings once); its CPU per admission in ms,
    or None when it did not finish."""
    setup = SETUPS[name]
    broker = {
        "filesystem": {"CELERY_BROKER_URL": "filesystem://"},
        "sqs": {"CELERY_BROKER_URL": f"sqs://x:x@{args.moto}", "SQS_IS_SECURE": "false", "AWS_REGION": "us-east-1",
                "SQS_QUEUE_PREFIX": f"bench{uuid.uuid4().hex[:8]}-"},
        "redis": {"CELERY_BROKER_URL": args.redis},
    }[setup.broker]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "infra_ainode.settings", "ENVIRONMENT": "development",
           "DATABASE_URL": database_url, "VAR_DIR": var_dir, "REDIS_URL": "", "AI_NODE_URL": "http://127.0.0.1:9",
           "AI_NODES": "", "MODEL_SYNC_INTERVAL": "0", "JOB_QUEUE": "jobs", **broker,
           "JOB_DISPATCH": setup.dispatch}
    command = [sys.executable, __file__, "--child", name, "--connections", str(args.connections),
               "--seconds", str(args.seconds), "--single-seconds", str(args.single_seconds),
               "--workers", str(args.workers)] + (["--show-sql"] if args.show_sql else [])
    if subprocess.run(command, env=env, cwd=REPO_ROOT).returncode != 0:
        return None
    return float((Path(var_dir) / CPU_FIGURE).read_text())


# --- the child: one set-up, with Django set up on its database and broker ---------------------------------------

def child(args: argparse.Namespace) -> None:
    import django

    django.setup()
    logging.disable(logging.WARNING)  # figures only; errors still show
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    var_dir = Path(os.environ["VAR_DIR"])
    # scripts/stack.sh collects the static files here; WhiteNoise warns at every start-up when the folder is missing.
    (var_dir / "static").mkdir()
    key, function_id = seed()
    statements = statements_of_one_admission(key, function_id)
    # A quota that limits spending: admission locks it, reads the month's standing and holds the job's worst case.
    with_quota = statements_of_one_admission(*seed_user("bench-quota", monthly_tokens=10**12,
                                                        max_concurrent_jobs=10**6))
    print(f"  SQL per admission: {describe(statements)}; with a quota: {describe(with_quota)}")
    if args.show_sql:
        for sql in statements + ["with a quota:"] + with_quota:
            print(f"    {sql[:160]}")
    with QueueDrain.of_the_job_queue():
        through_django, work_alone, publish = in_one_process(key, function_id)
    sending = ("; the relay, per job it sends (a worker's CPU, not counted above)"
               if settings.JOB_DISPATCH == "outbox" else ", of which the publish")
    print(f"  in one process, back to back: {through_django:.2f} ms of CPU per admission through Django and DRF; "
          f"the work alone {work_alone:.2f} ms ({100 * work_alone / through_django:.0f} %){sending} "
          f"{publish:.2f} ms")
    with Gunicorn(var_dir, workers=args.workers) as web, QueueDrain.of_the_job_queue():
        runs, cpu = measure(args, web.url, web.pid, var_dir, key=key, function_id=function_id)
    accepted = [job_id for result in runs for job_id in result.job_ids]
    print(f"  all three wrk runs: {len(accepted)} answered 202, {len(accepted) - existing_jobs(accepted)} of them "
          f"without a job row{refusals(runs)}")
    (var_dir / CPU_FIGURE).write_text(str(cpu))
    drop_queue()


def measure(args: argparse.Namespace, url: str, pid: int, folder: Path, *, key: str,
            function_id: str) -> tuple[tuple[WrkResult, ...], float]:
    """wrk's three runs against a web server (warm-up, one connection, loaded) and its report; returns the runs and
    the CPU per admission (ms) of process `pid` and its children during the loaded run."""
    run = WrkRun(url, folder / "admission.lua", key=key, function_id=function_id)
    warm_up = run(connections=4, seconds=3)  # imports, connections, the queue's creation
    single = run(connections=1, seconds=args.single_seconds)
    before = cpu_seconds([pid])
    loaded = run(connections=args.connections, seconds=args.seconds)
    cpu = (cpu_seconds([pid]) - before) * 1000 / max(loaded.accepted, 1)
    print(f"  one connection: p50 {single.p50:.1f} ms ({single.accepted / single.seconds:.0f} admissions/s)")
    print(f"  {args.connections} connections: {loaded.accepted / loaded.seconds:.1f} admissions/s, "
          f"p50 {loaded.p50:.1f} ms, p99 {loaded.p99:.1f} ms; web CPU {cpu:.2f} ms per admission "
          f"({cpu * loaded.accepted / 1000:.1f} s for {loaded.accepted} admissions)")
    return (warm_up, single, loaded), cpu


def refusals(runs: tuple[WrkResult, ...]) -> str:
    """What else the runs answered than 202, and wrk's socket errors: '' when nothing."""
    refused = sum((result.refused for result in runs), collections.Counter())
    errors = "; ".join(f"wrk: {result.errors}" for result in runs if result.errors)
    answered = "".join(f"; {n} answered {status}" for status, n in sorted(refused.items()))
    return answered + (f"; {errors}" if errors else "")


def seed() -> tuple[str, str]:
    """A user, their key, a function and a catalogue entry on a node that is never asked; (key, function id)."""
    from models_catalog.models import AINode, ModelCatalog

    node = AINode.objects.create(name="bench-node", kind="openai", url="http://127.0.0.1:9", queue="jobs")
    ModelCatalog.objects.create(node=node, model_id=MODEL, name=MODEL)
    return seed_user("bench")


def seed_user(name: str, **quota: Any) -> tuple[str, str]:
    """A user, with a quota of these limits if any are given, their key and a function; (key, function id)."""
    from django.contrib.auth.models import User

    from accounts.models import Quota
    from accounts.services import create_api_key
    from jobs.services import deploy_function

    user = User.objects.create_user(name)
    if quota:
        Quota.objects.create(user=user, **quota)
    key = create_api_key(user=user, name=name)[1]
    function = deploy_function(owner=user, name=name, code=b"def handler(event, context):\n    return 1\n")
    return key, str(function.pk)


def admission_body(function_id: str) -> str:
    """The body of every POST /run the bench sends: wrk's, the test client's and the in-process ones."""
    return json.dumps({"functionId": function_id, "modelId": MODEL, "inputData": {"n": 1}})


def statements_of_one_admission(key: str, function_id: str) -> list[str]:
    """The statements of the second of two admissions through the test client: the first warms caches up."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    body = admission_body(function_id)

    def admit() -> None:
        response = client.post("/run", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}",
                               HTTP_X_ASYNC="true")
        if response.status_code != 202:
            raise SystemExit(f"POST /run answered {response.status_code}: {response.content[:300]!r}")

    admit()
    with CaptureQueriesContext(connection) as captured:
        admit()
    # Django logs the BEGIN and COMMIT it asks the driver for (debug_transaction), not only the cursor's statements.
    return [query["sql"] for query in captured.captured_queries]


def in_one_process(key: str, function_id: str, *, admissions: int = 200,
                   rounds: int = 3) -> tuple[float, float, float]:
    """Where an admission's CPU goes, apart from the web server and the load: milliseconds of CPU per admission in
    this thread (time.thread_time: the bench drains the SQS queue on another), back to back, as medians of `rounds`
    rounds that take turns. (1) Through Django: Django's WSGI handler called with the request gunicorn would hand it
    (its middleware, DRF, the view). (2) The work alone: what the view asks of the services, called directly (the
    key's and the function's look-ups, then submit_job_once: the rows and the publish). (3) The publish alone:
    jobs.dispatch.enqueue_job, for a job id that no worker will see; with JOB_DISPATCH=outbox, the relay's sending
    instead, per job: jobs.outbox.dispatch_waiting sending the jobs (1) and (2) left waiting, a batch at a time."""
    import io

    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler

    from accounts.services import authenticate_key
    from jobs import services
    from jobs.dispatch import enqueue_job
    from jobs.idempotency import fingerprint
    from jobs.outbox import dispatch_waiting

    body = admission_body(function_id).encode()
    handler = WSGIHandler()

    def through_django() -> int:
        answer: list[str] = []
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/run", "SCRIPT_NAME": "", "QUERY_STRING": "",
                   "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
                   "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1", "CONTENT_TYPE": "application/json",
                   "CONTENT_LENGTH": str(len(body)), "HTTP_AUTHORIZATION": f"Bearer {key}", "HTTP_X_ASYNC": "true",
                   "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr, "wsgi.url_scheme": "http",
                   "wsgi.version": (1, 0), "wsgi.multithread": False, "wsgi.multiprocess": True,
                   "wsgi.run_once": False}
        content = b"".join(handler(environ, lambda status, headers, exc_info=None: answer.append(status)))
        if not answer[0].startswith("202"):
            raise SystemExit(f"POST /run answered {answer[0]}: {content[:300]!r}")
        return 1

    def work_alone() -> int:
        data = json.loads(body)
        owner = authenticate_key(key).user
        function = services.get_function(owner=owner, function_id=data["functionId"])
        services.submit_job_once(owner=owner, idempotency_key=None, body_fingerprint=fingerprint(data),
                                 function=function, model_id=data["modelId"], input_data=data["inputData"],
                                 token_budget=None)
        return 1

    def publish_alone() -> int:
        """Jobs sent: one publish, or one batch of the relay, as it sends under load."""
        if settings.JOB_DISPATCH != "outbox":
            enqueue_job(uuid.uuid4(), settings.JOB_QUEUE)
            return 1
        sent = dispatch_waiting()
        if not sent:
            raise SystemExit("the relay found no job to send")
        return sent

    figures: dict[Any, list[float]] = {through_django: [], work_alone: [], publish_alone: []}
    for admit in figures:  # warm-up: imports, connections, caches
        done = 0
        while done < 20:
            done += admit()
    for _ in range(rounds):
        for admit, values in figures.items():
            started, done = time.thread_time(), 0
            while done < admissions:
                done += admit()
            values.append((time.thread_time() - started) * 1000 / done)
    return tuple(statistics.median(values) for values in figures.values())


def describe(statements: list[str]) -> str:
    counts = collections.Counter(statement.split(None, 1)[0].upper() for statement in statements)
    data = {word: n for word, n in counts.items() if word not in TRANSACTION_CONTROL}
    control = {word: n for word, n in counts.items() if word in TRANSACTION_CONTROL}
    return (f"{sum(data.values())} data statements ({', '.join(f'{n} {w}' for w, n in sorted(data.items()))}) + "
            f"{sum(control.values())} transaction control "
            f"({', '.join(f'{n} {w}' for w, n in sorted(control.items())) or 'none'})")


class WebServer:
    """A server the bench measures: started on a free port of 127.0.0.1 with its output in `log`, ready when GET
    /healthz answers, and stopped by its own pid."""

    def __init__(self, log: Path):
        self.log = log
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> tuple[list[str], dict[str, str], Path]:
        """The command, its environment and its folder."""
        raise NotImplementedError

    def __enter__(self) -> WebServer:
        command, env, cwd = self.start()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.pid = self.process.pid
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=2).close()
                return self
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.__exit__()
                    raise SystemExit(f"{command[0]} did not start; see {self.log}") from None
                time.sleep(0.2)

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


class Gunicorn(WebServer):
    """The web API as scripts/stack.sh serves it: gunicorn with infra_ainode/gunicorn.conf.py, the workers' metrics
    summed in a folder of their own, from the checkout."""

    def __init__(self, var_dir: Path, *, workers: int):
        super().__init__(var_dir / "web.log")
        self.var_dir, self.workers = var_dir, workers

    def start(self) -> tuple[list[str], dict[str, str], Path]:
        metrics = self.var_dir / "prometheus-web"
        metrics.mkdir()
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics), "WEB_BIND": f"127.0.0.1:{self.port}",
               "WEB_WORKERS": str(self.workers)}
        return [str(GUNICORN), "--config", "infra_ainode/gunicorn.conf.py", "infra_ainode.wsgi"], env, REPO_ROOT


class OriginalController(WebServer):
    """bench/original_controller/server.mjs, sending to the SQS queue at `queue_url` on moto."""

    def __init__(self, folder: Path, *, moto: str, queue_url: str, key: str):
        super().__init__(folder / "original.log")
        self.moto, self.queue_url, self.key = moto, queue_url, key

    def start(self) -> tuple[list[str], dict[str, str], Path]:
        env = {**os.environ, **MOTO_CREDENTIALS, "AWS_ENDPOINT_URL_SQS": f"http://{self.moto}",
               "NODE_NO_WARNINGS": "1"}  # the SDK warns that its releases after January 2027 need Node 22
        return ["node", "server.mjs", str(self.port), self.queue_url, self.key], env, ORIGINAL


@dataclass
class WrkResult:
    seconds: float
    p50: float
    p99: float
    accepted: int
    job_ids: list[str]
    refused: collections.Counter
    errors: str


class WrkRun:
    """wrk against POST /run with x-async: true; each call is one run, read back from wrk and its answer files."""

    def __init__(self, url: str, script: Path, *, key: str, function_id: str):
        self.url, self.script, self.key, self.function_id = f"{url}/run", script, key, function_id

    def __call__(self, *, connections: int, seconds: int) -> WrkResult:
        folder = Path(tempfile.mkdtemp(dir=self.script.parent, prefix="wrk-"))
        self.script.write_text(WRK_SCRIPT % {"body": admission_body(self.function_id), "key": self.key,
                                             "folder": folder})
        out = subprocess.run(["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency",
                              "-s", str(self.script), self.url], check=True, capture_output=True, text=True).stdout
        lines = [line.split() for answers in folder.glob("answers-*") for line in answers.read_text().splitlines()]
        errors = re.search(r"Socket errors: (.*)", out)
        return WrkResult(
            seconds=milliseconds(re.search(r"requests in ([\d.]+\w+)", out).group(1)) / 1000,
            # The latency distribution's lines only: a thread statistic's "+/- Stdev" may end in "99%" too.
            p50=milliseconds(re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE).group(1)),
            p99=milliseconds(re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE).group(1)),
            accepted=sum(status == "202" for status, _ in lines),
            job_ids=[job_id for status, job_id in lines if status == "202"],
            refused=collections.Counter(status for status, _ in lines if status != "202"),
            errors=errors.group(1) if errors else "",
        )


class QueueDrain:
    """Receives and deletes an SQS queue's messages while wrk runs, as workers would (ten at a time, from a thread of
    the bench's own process, which is not counted): moto's SendMessage slows as its queue grows (it rescans the
    queue), so without it the web would spend the run waiting on moto. `queue` is a context manager that gives the
    (boto3 client, queue URL) to drain, or None for nothing to drain."""

    def __init__(self, queue: contextlib.AbstractContextManager | None):
        self.queue = queue

    @classmethod
    def of_the_job_queue(cls) -> QueueDrain:
        """On SQS, the job queue. The other brokers' publish does not depend on the queue's length, and their queues
        are left to grow."""
        from django.conf import settings

        return cls(job_queue() if settings.CELERY_BROKER_URL.startswith("sqs://") else None)

    def __enter__(self) -> QueueDrain:
        self.stopping = threading.Event()
        self.thread = None
        if self.queue is not None:
            self.thread = threading.Thread(target=self._drain, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(10)

    def _drain(self) -> None:
        with self.queue as (client, url):
            while not self.stopping.is_set():
                messages = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                                  WaitTimeSeconds=1).get("Messages", [])
                if messages:
                    client.delete_message_batch(QueueUrl=url, Entries=[
                        {"Id": str(n), "ReceiptHandle": each["ReceiptHandle"]} for n, each in enumerate(messages)])


@contextlib.contextmanager
def job_queue() -> Iterator[tuple[Any, str]]:
    """The job queue through the Celery channel's own client and queue URL, as the web publishes with them
    (credentials, endpoint, prefix); the queue is made here if no admission has made it yet."""
    from django.conf import settings

    from infra_ainode.celery import app

    with app.connection_for_write() as connection:
        channel = connection.default_channel
        yield channel.sqs(), channel._new_queue(settings.JOB_QUEUE)


def milliseconds(wrk_duration: str) -> float:
    """wrk's durations ("812.00us", "12.34ms", "1.20s", "1.00m") in milliseconds."""
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", wrk_duration).groups()
    return float(number) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}[unit]


def existing_jobs(job_ids: list[str]) -> int:
    from jobs.models import Job

    return sum(Job.objects.filter(pk__in=job_ids[start:start + 1000]).count()
               for start in range(0, len(job_ids), 1000))


def drop_queue() -> None:
    """Delete the job queue that the run filled (nothing consumes it), so that the broker does not keep it: the
    filesystem broker's folder goes with VAR_DIR."""
    from django.conf import settings

    from infra_ainode.celery import app

    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        return
    with app.connection_for_write() as connection:
        # Declared first: kombu deletes a queue through the bindings that its channel knows of.
        queue = app.amqp.queues[settings.JOB_QUEUE](connection.default_channel)
        queue.declare()
        queue.delete()


if __name__ == "__main__":
    sys.exit(main())
