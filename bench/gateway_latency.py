"""The per-job gateway's added latency per model call, against calling the node directly, in the same run.

    .venv/bin/python bench/gateway_latency.py [--calls 30] [--max-tokens 2] [--node-url URL] [--kind openai|ollama]
                                              [--database-url postgres://...]

It starts the real `JobGateway` for a job row in a throw-away SQLite database, in a process of its own as the
worker runs it (no container: the bench talks to the gateway's Unix socket itself, from this process), then makes
the same small call (temperature 0, a few tokens) N times directly to the node and N times through the gateway,
non-streamed and streamed, in two modes. Time is from sending the request to the answer's last byte. It prints
figures only: each series' median and 95th percentile, and their differences ("added").

- One at a time: direct and gateway calls alternate, so that both see the same node, and after each gateway call
  the bench waits (untimed) until the gateway has written the call's ledger row. This is the gateway's own path.
  It also prints the median and 95th percentile of the differences between each gateway call and the direct call
  made just before it ("paired"), which a busy machine disturbs less.
- Back to back, as a script calling in a loop: blocks of BLOCK calls each way, alternated. A gateway call's row is
  written once its answer is out, on the gateway's ledger thread, so it shares the CPU with the script's next call.

Until November 2026 the gateway ran in the bench's own process (the timed client then waited for the interpreter
lock while the gateway wrote a row), and the alternating mode did not wait for the rows, so each row's CPU fell on
the direct call after it.
"""
from __future__ import annotations

import argparse
import http.client
import json
import logging
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Say hi."
# Calls per block in the back-to-back mode.
BLOCK = 10


def _setup_django(workdir: str, database_url: str | None) -> None:
    os.environ["DATABASE_URL"] = database_url or f"sqlite:///{workdir}/bench.sqlite3"
    os.environ["VAR_DIR"] = workdir
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "infra_ainode.settings")
    sys.path.insert(0, str(REPO_ROOT))
    import django
    from django.core.management import call_command

    django.setup()
    logging.disable(logging.INFO)  # figures only: no per-call log lines
    call_command("migrate", verbosity=0)


def _job_row(model: str) -> str:
    """A running job, as the runner would have claimed it: the ledger rows need it."""
    from django.contrib.auth.models import User

    from jobs import services
    from jobs.models import Job, JobStatus

    owner = User.objects.create_user(username=f"bench-{uuid.uuid4().hex[:6]}")
    function = services.deploy_function(owner=owner, name="bench", code=b"def handler(event, context):\n    pass\n")
    job = Job.objects.create(owner=owner, function=function, function_version=function.current_version,
                             model_id=model, node="bench", queue="jobs", memory_mb=function.memory_mb,
                             timeout_seconds=function.timeout_seconds, status=JobStatus.RUNNING)
    return str(job.pk)


class _GatewayProcess:
    """The real `JobGateway` in a process of its own, as in production: the worker runs it and the script is in a
    container. Sharing this process with the timed client would make the client wait for the interpreter lock
    while the gateway writes the ledger row just after answering, which no script ever does."""

    def __init__(self, job_id: str, model: str, kind: str, node_url: str, workdir: str):
        from django.db import connections

        from jobs.metering.gateway import SOCKET_NAME

        connections.close_all()  # the child opens its own database connection
        self.socket_path = os.path.join(workdir, SOCKET_NAME)
        context = multiprocessing.get_context("fork")
        self._control, child_end = context.Pipe()
        self._process = context.Process(target=_serve, args=(child_end, job_id, model, kind, node_url, workdir),
                                        daemon=True)
        self._process.start()
        if not self._control.poll(60) or self._control.recv() != "ready":
            raise SystemExit("the gateway process did not start")

    def stop(self) -> None:
        self._control.send("stop")
        self._process.join(30)


def _serve(control: Connection, job_id: str, model: str, kind: str, node_url: str, workdir: str) -> None:
    from jobs.metering.gateway import GatewayConfig, JobGateway, ModelRoute

    config = GatewayConfig(job_id=job_id, default_model=model,
                           routes={model: ModelRoute(model, "bench", kind, node_url)})
    gateway = JobGateway(config, socket_dir=workdir).start()
    control.send("ready")
    control.recv()
    gateway.stop(drain_timeout=10)


def _model_of(node_url: str, kind: str) -> str:
    parts = urlsplit(node_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    connection.request("GET", "/v1/models" if kind == "openai" else "/api/tags")
    data = json.loads(connection.getresponse().read())
    connection.close()
    return data["data"][0]["id"] if kind == "openai" else data["models"][0]["model"]


def _request(kind: str, model: str, max_tokens: int, stream: bool) -> tuple[str, bytes]:
    """The node's own API call; through the gateway the same request goes to the same route."""
    if kind == "openai":
        body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "seed": 42,
                "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return "/v1/completions", json.dumps(body).encode()
    body = {"model": model, "prompt": PROMPT, "stream": stream,
            "options": {"num_predict": max_tokens, "temperature": 0, "seed": 42}}
    return "/api/generate", json.dumps(body).encode()


def _timed(connect: Callable[[], http.client.HTTPConnection], path: str, body: bytes) -> float:
    """Milliseconds from sending the request to the answer's last byte."""
    connection = connect()
    started = time.perf_counter()
    connection.request("POST", path, body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    while response.read(65536):
        pass
    elapsed = (time.perf_counter() - started) * 1000
    connection.close()
    if response.status != 200:
        raise SystemExit(f"{path} answered HTTP {response.status}")
    return elapsed


class _Through:
    """Timed calls through the gateway, counted, and an untimed wait until the gateway's ledger thread has written a
    row for each of them."""

    def __init__(self, socket_path: str, job_id: str):
        self.socket_path, self.job_id, self.calls = socket_path, job_id, 0

    def __call__(self, path: str, body: bytes) -> float:
        from sdk.transport import UnixHTTPConnection

        self.calls += 1
        return _timed(lambda: UnixHTTPConnection(self.socket_path, 120), path, body)

    def settle(self) -> None:
        from jobs.models import LLMCall

        deadline = time.monotonic() + 30
        while LLMCall.objects.filter(job_id=self.job_id).count() < self.calls:
            if time.monotonic() > deadline:
                raise SystemExit("the gateway did not write its ledger rows within 30 s")
            time.sleep(0.002)


def _report(label: str, times: dict[str, list[float]], *, paired: bool) -> None:
    for way, values in times.items():
        print(f"{label:30} {way:8} median {statistics.median(values):7.1f} ms   p95 {_p95(values):7.1f} ms")
    d_med, g_med = statistics.median(times["direct"]), statistics.median(times["gateway"])
    d_p95, g_p95 = _p95(times["direct"]), _p95(times["gateway"])
    print(f"{label:30} added    median {g_med - d_med:+7.1f} ms   p95 {g_p95 - d_p95:+7.1f} ms   "
          f"ratio median {g_med / d_med:.2f}x   p95 {g_p95 / d_p95:.2f}x")
    if paired:
        # Each gateway call against the direct call just before it: on a shared machine, load that comes and goes
        # slows both alike and drops out of their difference.
        differences = [g - d for d, g in zip(times["direct"], times["gateway"])]
        print(f"{label:30} paired   median {statistics.median(differences):+7.1f} ms   "
              f"p95 {_p95(differences):+7.1f} ms")


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=2)
    parser.add_argument("--node-url", default=os.environ.get("AI_NODE_URL", "http://127.0.0.1:8090"))
    parser.add_argument("--kind", choices=("openai", "ollama"), default=os.environ.get("AI_NODE_KIND", "openai"))
    parser.add_argument("--database-url", help="an existing database to migrate and use for the ledger rows "
                        "(default: a throw-away SQLite file)")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="bench-gw-")
    _setup_django(workdir, args.database_url)
    from django.db import connection

    model = _model_of(args.node_url, args.kind)
    job_id = _job_row(model)
    vendor = connection.vendor
    gateway = _GatewayProcess(job_id, model, args.kind, args.node_url, workdir)
    node = urlsplit(args.node_url)
    direct = lambda: http.client.HTTPConnection(node.hostname, node.port, timeout=120)  # noqa: E731

    print(f"node {args.node_url} (kind {args.kind}), model {model}, ledger on {vendor}, "
          f"{args.calls} calls of {args.max_tokens} tokens each way, each mode")
    through = _Through(gateway.socket_path, job_id)
    try:
        for stream in (False, True):
            label = "streamed" if stream else "non-streamed"
            path, body = _request(args.kind, model, args.max_tokens, stream)
            for _ in range(3):  # warm the node's prompt cache and both paths
                _timed(direct, path, body)
                through(path, body)
            through.settle()
            # One at a time: each gateway call's row is written before the next call of either kind.
            times: dict[str, list[float]] = {"direct": [], "gateway": []}
            for _ in range(args.calls):
                times["direct"].append(_timed(direct, path, body))
                times["gateway"].append(through(path, body))
                through.settle()
            _report(f"{label}, one at a time", times, paired=True)
            # Back to back, as a script calls in a loop: blocks of BLOCK calls each way, alternated; the rows of a
            # gateway block are written before the next direct block.
            times = {"direct": [], "gateway": []}
            while len(times["gateway"]) < args.calls:
                for _ in range(BLOCK):
                    times["direct"].append(_timed(direct, path, body))
                for _ in range(BLOCK):
                    times["gateway"].append(through(path, body))
                through.settle()
            _report(f"{label}, back to back", times, paired=False)
    finally:
        gateway.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
