"""Prometheus metrics: every metric the platform exports, and the few calls that move them.

Call sites are the service boundaries only: a job submitted (jobs/services.py), claimed and finished
(jobs/runner.py), its container started (jobs/runner.py), a model call recorded (jobs/metering/ledger.py). Web
processes export at /metrics; a worker exports on WORKER_METRICS_PORT.

Several processes (gunicorn workers, Celery's prefork children) add up through PROMETHEUS_MULTIPROC_DIR: set it
in the environment before the process starts (prometheus_client reads it at import), one empty folder per
service, and `exposition()` sums the folder's files. Without it each process exports only its own values.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

# Seconds: a job waits in the queue for milliseconds to minutes, runs for seconds to the 900 s ceiling.
_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
_RUN_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900)
_START_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)

JOBS_SUBMITTED = Counter("ainode_jobs_submitted", "Jobs accepted by POST /run", ["model", "queue"])
JOBS_FINISHED = Counter("ainode_jobs_finished", "Jobs that reached a final state", ["status", "error_code"])
JOB_QUEUE_WAIT = Histogram("ainode_job_queue_wait_seconds", "From submission to a worker's claim",
                           buckets=_WAIT_BUCKETS)
JOB_RUN_TIME = Histogram("ainode_job_run_seconds", "From a worker's claim to the job's end", ["status"],
                         buckets=_RUN_BUCKETS)
JOBS_RUNNING = Gauge("ainode_jobs_running", "Jobs this worker is running now", multiprocess_mode="livesum")
CONTAINER_START = Histogram("ainode_container_start_seconds", "From asking the engine for a job's container to "
                            "its start", buckets=_START_BUCKETS)
MODEL_CALLS = Counter("ainode_model_calls", "Model calls through job gateways", ["model", "node", "outcome"])
TOKENS = Counter("ainode_tokens", "Tokens the nodes reported for model calls", ["model", "kind"])
GATEWAY_ADDED_LATENCY = Histogram("ainode_gateway_added_latency_seconds", "A model call's time at the gateway less "
                                  "the node's own time for it", buckets=_LATENCY_BUCKETS)
NODE_ERRORS = Counter("ainode_node_errors", "Model calls that failed at the node", ["node", "code"])


def job_submitted(*, model: str, queue: str) -> None:
    JOBS_SUBMITTED.labels(model=model, queue=queue).inc()


def job_claimed(*, queue_wait_seconds: float) -> None:
    JOB_QUEUE_WAIT.observe(max(0.0, queue_wait_seconds))


def job_finished(*, status: str, error_code: str, run_seconds: float | None) -> None:
    JOBS_FINISHED.labels(status=status, error_code=error_code or "").inc()
    if run_seconds is not None:
        JOB_RUN_TIME.labels(status=status).observe(max(0.0, run_seconds))


def container_started(*, seconds: float) -> None:
    CONTAINER_START.observe(seconds)


def model_call(*, model: str, node: str, error_code: str, prompt_tokens: int | None, completion_tokens: int | None,
               duration_ms: float, node_duration_ms: float | None) -> None:
    MODEL_CALLS.labels(model=model, node=node, outcome=error_code or "ok").inc()
    if prompt_tokens is not None:
        TOKENS.labels(model=model, kind="prompt").inc(prompt_tokens)
    if completion_tokens is not None:
        TOKENS.labels(model=model, kind="completion").inc(completion_tokens)
    if node_duration_ms is not None and duration_ms >= node_duration_ms:
        GATEWAY_ADDED_LATENCY.observe((duration_ms - node_duration_ms) / 1000)
    if error_code.startswith("node_"):
        NODE_ERRORS.labels(node=node, code=error_code).inc()


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def registry(extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """The registry to export: every process's files when multiprocess, else this process's own metrics."""
    if multiprocess_enabled():
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected)
    else:
        collected = CollectorRegistry()
        collected.register(_Own())
    for collector in extra:
        collected.register(collector)
    return collected


def exposition(extra: Iterable[Collector] = (), *, accept: str = "") -> tuple[bytes, str]:
    """The exposition format the scraper's Accept header asks for (Prometheus' text format by default) and its
    content type."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry(extra)), content_type


def process_exited(pid: int) -> None:
    """A dead process's live gauges must stop counting (its counters stay in the sum)."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(pid)


def start_worker_exporter(*, port: int, address: str, token: str) -> None:
    """Serve this worker's metrics (all its pool processes) over HTTP on address:port, in a daemon thread. With
    `token`, a scrape needs `Authorization: Bearer <token>` (403 otherwise), as the web's /metrics does. Raises
    ValueError for an address other than loopback without a token: metrics name models, nodes and error codes."""
    import hmac
    import ipaddress
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import make_wsgi_app

    if not token and not ipaddress.ip_address(address).is_loopback:
        raise ValueError(f"worker metrics on {address} need METRICS_TOKEN (or a loopback address)")
    metrics_app = make_wsgi_app(registry())

    def app(environ: dict, start_response):  # noqa: ANN202 - WSGI
        given = environ.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ").strip()
        if token and not hmac.compare_digest(given.encode(), token.encode()):
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"metrics need the scrape token\n"]
        return metrics_app(environ, start_response)

    class _Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # scrapes every few seconds: not worth a line
            pass

    server = make_server(address, port, app, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()


class _Own(Collector):
    """This process's metrics from the default registry, so that extra collectors can be added beside them
    without registering them globally."""

    def collect(self):
        return REGISTRY.collect()
