"""POST /run admission in one run on three set-ups: what the web process spends on one admission, and its SQL.

    .venv/bin/python bench/admission.py [--setups embedded,sqs,redis] [--connections 20] [--seconds 20]
        [--single-seconds 5] [--workers 2] [--pg postgres://postgres@127.0.0.1:5432] [--moto 127.0.0.1:5055]
        [--redis redis://127.0.0.1:6379/13] [--show-sql]

The set-ups: `embedded`, the default that scripts/stack.sh runs (SQLite, kombu's filesystem broker); `sqs`,
PostgreSQL with the moto SQS server; `redis`, PostgreSQL with Redis as the broker. REDIS_URL is empty in all three,
so only the database and the broker differ. It needs wrk (`apt-get install -y wrk`) and, for the set-ups that use
them, PostgreSQL, moto_server and Redis as `bash scripts/services.sh postgres moto redis` starts them; it names the
first one missing in one line and stops. It starts the rest itself, per set-up: a fresh database (a temporary
SQLite file, or a throw-away PostgreSQL database) and VAR_DIR, seeded through the services with a user, a key, a
function and a catalogue entry (no node is asked), and gunicorn from the checkout's .venv as scripts/stack.sh
starts it (infra_ainode/gunicorn.conf.py, --workers workers, PROMETHEUS_MULTIPROC_DIR). No Celery worker runs: the
queue only grows, except on SQS, where a thread of the bench receives and deletes the messages as workers would
(moto's SendMessage slows as its queue grows). For each it prints:

- the SQL of one admission: a Django test Client `POST /run` (x-async) in the bench's own process, on the
  set-up's database and broker, after a warm-up request, under CaptureQueriesContext; the data statements apart
  from transaction control (BEGIN, COMMIT, SAVEPOINT, RELEASE; Django logs the BEGIN and COMMIT it asks of the
  driver, which on PostgreSQL are round trips of their own too);
- the p50 latency over one connection (wrk, --single-seconds);
- admissions/s, p50 and p99 under wrk with --connections connections for --seconds seconds (x-async: true);
- the web CPU per admission under that load: utime + stime of the gunicorn master and every worker, children
  included (/proc/PID/stat), from just before to just after that wrk run, over the number of 202s;
- whether every 202 left a job row (each jobId that wrk received in its warm-up and two runs, looked up).

Figures only; never part of the test run.
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.dashboard import postgres_database  # noqa: E402 - the checkout's root goes on the path first
from bench.jobs import cpu_seconds  # noqa: E402

GUNICORN = REPO_ROOT / ".venv" / "bin" / "gunicorn"
SETUPS = {"embedded": "SQLite + filesystem broker", "sqs": "PostgreSQL + SQS (moto)", "redis": "PostgreSQL + Redis"}
# Statements that open, close or mark a transaction rather than read or write data.
TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")

# Each wrk thread writes the status of every answer, and the jobId of every 202, to a file of its own: the bench
# counts the 202s itself and looks each job up.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"functionId": "%(function_id)s", "modelId": "bench-model", "inputData": {"n": 1}}'
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
    if unknown := set(setups) - set(SETUPS):
        parser.error(f"unknown set-up(s): {', '.join(sorted(unknown))}")
    if missing := missing_requirement(args, setups):
        print(f"bench/admission.py: {missing}", file=sys.stderr)
        return 1
    print(f"{os.cpu_count()} CPUs; gunicorn with {args.workers} workers; wrk {args.connections} connections for "
          f"{args.seconds} s")
    failures = 0
    for name in setups:
        with tempfile.TemporaryDirectory(prefix="bench-admission-") as var_dir:
            if name == "embedded":
                finished = run_child(args, name, f"sqlite:///{var_dir}/db.sqlite3", var_dir)
            else:
                with postgres_database(f"{args.pg}/postgres") as database_url:
                    finished = run_child(args, name, database_url, var_dir)
        if not finished:
            failures += 1
            print(f"  {name}: the measurement failed (see above)")
    return 1 if failures else 0


def missing_requirement(args: argparse.Namespace, setups: list[str]) -> str | None:
    """One line naming the first thing the chosen set-ups need that is not here, or None."""
    if not shutil.which("wrk"):
        return "wrk is not installed: apt-get install -y wrk"
    start = "start it with: bash scripts/services.sh"
    if {"sqs", "redis"} & set(setups):
        import psycopg

        try:
            psycopg.connect(f"{args.pg}/postgres".replace("postgres://", "postgresql://"), connect_timeout=3).close()
        except psycopg.Error as exc:
            return f"PostgreSQL does not answer at {args.pg} ({str(exc).splitlines()[0]}); {start} postgres"
    host, _, port = args.moto.rpartition(":")
    if "sqs" in setups and not answers(host, int(port)):
        return f"the moto SQS server does not answer on {args.moto}; {start} moto"
    redis = urlsplit(args.redis)
    if "redis" in setups and not answers(redis.hostname or "127.0.0.1", redis.port or 6379, b"PING\r\n"):
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


def run_child(args: argparse.Namespace, name: str, database_url: str, var_dir: str) -> bool:
    """Measure set-up `name` in a process of its own (Django reads its settings once); whether it finished."""
    broker = {
        "embedded": {"CELERY_BROKER_URL": "filesystem://"},
        "sqs": {"CELERY_BROKER_URL": f"sqs://x:x@{args.moto}", "SQS_IS_SECURE": "false", "AWS_REGION": "us-east-1",
                "SQS_QUEUE_PREFIX": f"bench{uuid.uuid4().hex[:8]}-"},
        "redis": {"CELERY_BROKER_URL": args.redis},
    }[name]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "infra_ainode.settings", "ENVIRONMENT": "development",
           "DATABASE_URL": database_url, "VAR_DIR": var_dir, "REDIS_URL": "", "AI_NODE_URL": "http://127.0.0.1:9",
           "AI_NODES": "", "MODEL_SYNC_INTERVAL": "0", "JOB_QUEUE": "jobs", **broker}
    command = [sys.executable, __file__, "--child", name, "--connections", str(args.connections),
               "--seconds", str(args.seconds), "--single-seconds", str(args.single_seconds),
               "--workers", str(args.workers)] + (["--show-sql"] if args.show_sql else [])
    print(f"\n{name}: {SETUPS[name]} (load average {' '.join(f'{load:.2f}' for load in os.getloadavg())})",
          flush=True)
    return subprocess.run(command, env=env, cwd=REPO_ROOT).returncode == 0


# --- the child: one set-up, with Django set up on its database and broker ---------------------------------------

def child(args: argparse.Namespace) -> None:
    import django

    django.setup()
    logging.disable(logging.WARNING)  # figures only; errors still show
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    var_dir = Path(os.environ["VAR_DIR"])
    # scripts/stack.sh collects the static files here; WhiteNoise warns at every start-up when the folder is missing.
    (var_dir / "static").mkdir()
    key, function_id = seed()
    statements = statements_of_one_admission(key, function_id)
    print(f"  SQL per admission: {describe(statements)}")
    if args.show_sql:
        for sql in statements:
            print(f"    {sql[:160]}")
    with Gunicorn(var_dir, workers=args.workers) as web, QueueDrain():
        script = var_dir / "admission.lua"
        run = WrkRun(web.url, script, key=key, function_id=function_id)
        warm_up = run(connections=4, seconds=3)  # imports, connections, the queue's creation
        single = run(connections=1, seconds=args.single_seconds)
        before = cpu_seconds([web.pid])
        loaded = run(connections=args.connections, seconds=args.seconds)
        cpu = cpu_seconds([web.pid]) - before
    print(f"  one connection: p50 {single.p50:.1f} ms ({single.accepted / single.seconds:.0f} admissions/s)")
    print(f"  {args.connections} connections: {loaded.accepted / loaded.seconds:.1f} admissions/s, "
          f"p50 {loaded.p50:.1f} ms, p99 {loaded.p99:.1f} ms; web CPU {cpu * 1000 / max(loaded.accepted, 1):.2f} ms "
          f"per admission ({cpu:.1f} s for {loaded.accepted} admissions)")
    runs = (warm_up, single, loaded)
    accepted = [job_id for result in runs for job_id in result.job_ids]
    refused = sum((result.refused for result in runs), collections.Counter())
    errors = "; ".join(f"wrk: {result.errors}" for result in runs if result.errors)
    print(f"  all three wrk runs: {len(accepted)} answered 202, {len(accepted) - existing_jobs(accepted)} of them "
          f"without a job row" + "".join(f"; {n} answered {status}" for status, n in sorted(refused.items()))
          + (f"; {errors}" if errors else ""))
    drop_queue()


def seed() -> tuple[str, str]:
    """A user, their key, a function and a catalogue entry on a node that is never asked; (key, function id)."""
    from django.contrib.auth.models import User

    from accounts.services import create_api_key
    from jobs.services import deploy_function
    from models_catalog.models import AINode, ModelCatalog

    node = AINode.objects.create(name="bench-node", kind="openai", url="http://127.0.0.1:9", queue="jobs")
    ModelCatalog.objects.create(node=node, model_id="bench-model", name="bench-model")
    user = User.objects.create_user("bench")
    key = create_api_key(user=user, name="bench")[1]
    function = deploy_function(owner=user, name="bench", code=b"def handler(event, context):\n    return 1\n")
    return key, str(function.pk)


def statements_of_one_admission(key: str, function_id: str) -> list[str]:
    """The statements of the second of two admissions through the test client: the first warms caches up."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    body = json.dumps({"functionId": function_id, "modelId": "bench-model", "inputData": {"n": 1}})

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


def describe(statements: list[str]) -> str:
    counts = collections.Counter(statement.split(None, 1)[0].upper() for statement in statements)
    data = {word: n for word, n in counts.items() if word not in TRANSACTION_CONTROL}
    control = {word: n for word, n in counts.items() if word in TRANSACTION_CONTROL}
    return (f"{sum(data.values())} data statements ({', '.join(f'{n} {w}' for w, n in sorted(data.items()))}) + "
            f"{sum(control.values())} transaction control "
            f"({', '.join(f'{n} {w}' for w, n in sorted(control.items())) or 'none'})")


class Gunicorn:
    """The web API as scripts/stack.sh serves it: gunicorn with infra_ainode/gunicorn.conf.py, the workers' metrics
    summed in a folder of their own; started from the checkout on a free port, and stopped by its own pid."""

    def __init__(self, var_dir: Path, *, workers: int):
        self.var_dir, self.workers = var_dir, workers
        self.log = var_dir / "web.log"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Gunicorn:
        metrics = self.var_dir / "prometheus-web"
        metrics.mkdir()
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics), "WEB_BIND": f"127.0.0.1:{self.port}",
               "WEB_WORKERS": str(self.workers)}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(GUNICORN), "--config", "infra_ainode/gunicorn.conf.py", "infra_ainode.wsgi"], cwd=REPO_ROOT,
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.process.pid
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=2).close()
                return self
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.__exit__()
                    raise SystemExit(f"gunicorn did not start; see {self.log}") from None
                time.sleep(0.2)

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


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
        self.script.write_text(WRK_SCRIPT % {"function_id": self.function_id, "key": self.key, "folder": folder})
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
    """On SQS, receives and deletes the job queue's messages while wrk runs, as workers would (ten at a time, from a
    thread of the bench's own process, which is not counted): moto's SendMessage slows as its queue grows (it
    rescans the queue), so without it the web would spend the run waiting on moto. The other brokers' publish does
    not depend on the queue's length, and their queues are left to grow."""

    def __enter__(self) -> QueueDrain:
        from django.conf import settings

        self.stopping = threading.Event()
        self.thread = None
        if settings.CELERY_BROKER_URL.startswith("sqs://"):
            self.thread = threading.Thread(target=self._drain, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(10)

    def _drain(self) -> None:
        from django.conf import settings

        from infra_ainode.celery import app

        # The channel's own client and queue URL, as the web publishes with them (credentials, endpoint, prefix);
        # the queue is made here if no admission has made it yet.
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            client, url = channel.sqs(), channel._new_queue(settings.JOB_QUEUE)
            while not self.stopping.is_set():
                messages = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                                  WaitTimeSeconds=1).get("Messages", [])
                if messages:
                    client.delete_message_batch(QueueUrl=url, Entries=[
                        {"Id": str(n), "ReceiptHandle": each["ReceiptHandle"]} for n, each in enumerate(messages)])


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
