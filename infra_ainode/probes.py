"""Probes for an orchestrator or a load balancer: /healthz (the process answers) and /readyz (its dependencies do),
and /metrics for Prometheus.

The probes are unauthenticated, plain Django views (no DRF, no session, no database for /healthz), answered by
ProbesMiddleware ahead of the host check and the HTTPS redirect. /readyz asks the database, the broker, Redis (when
REDIS_URL is set) and the AI nodes at once, each bounded by READYZ_TIMEOUT milliseconds, and answers 200 when all
are up and 503 naming the ones that are down. The AI nodes count as up when at least one enabled node answers its
health route. Anyone may ask, so the answer says only which checks are up; what each learnt (node addresses, the
database's vendor, error texts) is for the operator: with the scrape token (as /metrics), or in the log. The
answer is kept READYZ_CACHE_SECONDS, so a flood of probes costs the dependencies one round of checks per period.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from django.conf import settings
from django.db import connection, connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from core import metrics as core_metrics

logger = logging.getLogger(__name__)


class ProbesMiddleware:
    """Answers /healthz, /readyz and /metrics before any other middleware.

    An orchestrator probes a pod by its address (`Host: 10.0.3.7:8000`), which is in no ALLOWED_HOSTS, and over
    plain HTTP, which production redirects: both checks would refuse the probe. The probes reveal nothing a host
    name could protect (/metrics has its own token), so they skip those checks; every other path goes on as usual.
    Listed first in MIDDLEWARE.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.routes = {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics}

    def __call__(self, request: HttpRequest) -> HttpResponse:
        view = self.routes.get(request.path_info)
        return view(request) if view is not None else self.get_response(request)


class CheckFailed(Exception):
    """A dependency is down; `detail` adds what the check learnt on the way (e.g. each node's answer)."""

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.detail = detail


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_GET
@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    results = _readiness()
    down = sorted(name for name, result in results.items() if not result["ok"])
    if _may_scrape(request):
        checks = results
    else:
        checks = {name: {"ok": result["ok"]} for name, result in results.items()}
    body = {"status": "unavailable" if down else "ok", "down": down, "checks": checks}
    return JsonResponse(body, status=503 if down else 200)


_last_readiness: tuple[float, dict[str, dict[str, Any]]] = (float("-inf"), {})


def _readiness() -> dict[str, dict[str, Any]]:
    """The checks' results, asked again at most every READYZ_CACHE_SECONDS (per process)."""
    global _last_readiness
    asked_at, results = _last_readiness
    if time.monotonic() - asked_at < settings.READYZ_CACHE_SECONDS:
        return results
    checks: dict[str, Callable[[float], dict[str, Any]]] = {
        "database": _check_database, "broker": _check_broker, "ai_nodes": _check_ai_nodes,
    }
    if settings.REDIS_URL:
        checks["redis"] = _check_redis
    results = run_checks(checks, timeout=settings.READYZ_TIMEOUT / 1000)
    down = sorted(name for name, result in results.items() if not result["ok"])
    if down:
        logger.warning("not ready: %s", ", ".join(f"{name} ({results[name].get('error')})" for name in down))
    _last_readiness = (time.monotonic(), results)
    return results


def run_checks(checks: dict[str, Callable[[float], dict[str, Any]]], *, timeout: float) -> dict[str, dict[str, Any]]:
    """Run every check at once; each result is {"ok", "ms", ...}. A check still running at the deadline is down
    with error "timeout"; its thread is left to end on its own socket timeout, after we answered."""
    executor = ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="readyz")
    started = time.monotonic()
    try:
        futures: dict[str, Future] = {name: executor.submit(_timed, check, timeout) for name, check in checks.items()}
        wait(futures.values(), timeout=timeout)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
    results = {}
    for name, future in futures.items():
        if future.done():
            results[name] = future.result()
        else:
            results[name] = {"ok": False, "ms": round((time.monotonic() - started) * 1000),
                             "error": f"timeout: no answer within {round(timeout * 1000)} ms"}
    return results


def _timed(check: Callable[[float], dict[str, Any]], timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    try:
        detail = {"ok": True, **check(timeout)}
    except CheckFailed as exc:
        detail = {"ok": False, "error": str(exc), **exc.detail}
    except Exception as exc:  # any failure of a dependency's client means "down"; the detail says which
        detail = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {**detail, "ms": round((time.monotonic() - started) * 1000)}


def _check_database(timeout: float) -> dict[str, Any]:
    # A thread of its own opens its own connection; close it, or every probe would leave one open.
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connections.close_all()
    return {"vendor": connection.vendor}


def _check_broker(timeout: float) -> dict[str, Any]:
    """The broker the web process enqueues to: its folders (filesystem), a queue listing (SQS), a PING (Redis)."""
    from infra_ainode.celery import app

    url = app.conf.broker_url or ""
    if url.startswith("filesystem://"):
        folder = app.conf.broker_transport_options["data_folder_out"]
        if not os.access(folder, os.W_OK):
            raise CheckFailed(f"broker folder {folder} is missing or not writable")
        return {"transport": "filesystem"}
    with app.pool.acquire(block=True, timeout=timeout) as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        channel = conn.default_channel
        transport = conn.transport.driver_type
        if transport == "sqs":
            prefix = app.conf.broker_transport_options.get("queue_name_prefix", "")
            channel.sqs().list_queues(QueueNamePrefix=prefix, MaxResults=1)
        elif transport == "redis":
            channel.client.ping()
    return {"transport": transport}


def _check_redis(timeout: float) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
    finally:
        client.close()
    return {}


def _check_ai_nodes(timeout: float) -> dict[str, Any]:
    """Up when at least one enabled node answers; the detail lists each node."""
    from models_catalog.models import AINode
    from nodeclient import client_for
    from models_catalog.services import configured_nodes

    try:
        nodes = [(n.name, n.kind, n.url) for n in AINode.objects.filter(enabled=True).order_by("name")]
    finally:
        connections.close_all()
    if not nodes:  # before the first catalogue sync: the nodes of the settings
        nodes = [(n.name, n.kind, n.url) for n in configured_nodes()]
    if not nodes:
        raise CheckFailed("no AI node is configured or enabled")
    with ThreadPoolExecutor(max_workers=min(len(nodes), 16), thread_name_prefix="readyz-node") as pool:
        answers = list(pool.map(lambda node: _node_answers(client_for, node, timeout), nodes))
    detail = {name: {"ok": ok, "url": url} for (name, _, url), ok in zip(nodes, answers)}
    if not any(answers):
        raise CheckFailed(f"no AI node answers: {', '.join(detail)}", nodes=detail)
    return {"nodes": detail}


def _node_answers(client_for: Callable[..., Any], node: tuple[str, str, str], timeout: float) -> bool:
    name, kind, url = node
    try:
        return client_for(kind, url, timeout).health()
    except ValueError:  # a misconfigured node (kind, URL) is simply not up
        return False


# --- /metrics ---------------------------------------------------------------------------------------------------

@require_GET
@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format. With METRICS_TOKEN set, it needs `Authorization: Bearer <token>`. Without one it
    answers only to clients on loopback, and in production not at all: a reverse proxy on the same host would make
    every client look like loopback."""
    if not _may_scrape(request):
        return JsonResponse({"detail": "Metrics need the scrape token.", "code": "not_authenticated"}, status=403)
    body, content_type = core_metrics.exposition([CatalogSyncAge(), FairShare()],
                                                 accept=request.headers.get("Accept", ""))
    return HttpResponse(body, content_type=content_type)


def _may_scrape(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        client = ipaddress.ip_address(request.META.get("REMOTE_ADDR") or "0.0.0.0")
        return client.is_loopback and not settings.PRODUCTION
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), token.encode())


class CatalogSyncAge(Collector):
    """Seconds since each enabled AI node last listed its models (a sync that keeps failing shows as growth)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from models_catalog.models import AINode

        family = GaugeMetricFamily("ainode_catalog_sync_age_seconds",
                                   "Seconds since the AI node last answered a catalogue sync", labels=["node"])
        now = timezone.now()
        for name, seen in AINode.objects.filter(enabled=True).values_list("name", "last_seen_at"):
            family.add_metric([name], (now - seen).total_seconds() if seen else float("inf"))
        yield family


class FairShare(Collector):
    """Fair share as it stands (jobs.fairness.standings), per user labelled by username: each queue's jobs waiting
    and in flight, each node's calls waiting for a slot and holding one, and each pool's recent service and shares.
    Read from the database at each scrape, in a few grouped queries."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from jobs.fairness.standings import NODE, QUEUE, pool_standings

        def gauge(name: str, text: str, scope: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"ainode_fair_share_{name}", text, labels=[scope, "user"])

        waiting_jobs = gauge("waiting_jobs", "Jobs waiting to be sent to the queue's workers", "queue")
        in_flight_jobs = gauge("in_flight_jobs", "Jobs sent to the queue's workers and not ended", "queue")
        waiting_calls = gauge("waiting_calls", "Model calls waiting for one of the node's call slots", "node")
        in_flight_calls = gauge("in_flight_calls", "Model calls holding one of the node's call slots", "node")
        service = gauge("service_units", "Recent service from the pool, in units, decayed to now", "pool")
        share = gauge("share", "The user's part of the pool's recent service (0 to 1)", "pool")
        counts = {QUEUE: (waiting_jobs, in_flight_jobs), NODE: (waiting_calls, in_flight_calls)}
        for pool in pool_standings():
            waiting, in_flight = counts[pool.kind]
            for user in pool.users:
                waiting.add_metric([pool.name, user.username], user.waiting)
                in_flight.add_metric([pool.name, user.username], user.in_flight)
                service.add_metric([pool.pool, user.username], user.service)
                share.add_metric([pool.pool, user.username], user.share)
        yield from (waiting_jobs, in_flight_jobs, waiting_calls, in_flight_calls, service, share)
