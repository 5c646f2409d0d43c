"""Webhooks: how fast the outbox delivers, and what webhooks add to a job, on against off, in one run.

    .venv/bin/python bench/webhooks.py [--events 400] [--slots 1,4] [--endings 200] [--jobs 6] [--endpoints 3]

A throw-away SQLite database and VAR_DIR (kombu's filesystem broker: each event is published after its commit, as
in production), and a receiver on 127.0.0.1 (allowed by OUTBOUND_ALLOWED_NETWORKS) that answers 200 at once.

- Delivery throughput: --events events of one endpoint, recorded, then delivered by `outbound.delivery.deliver`
  (claim, sign, POST, log) from --slots threads at once, each standing for one slot of an outbound worker: events/s
  and the median attempt's duration as the log recorded it.
- A job's end: `jobs.endings.end_job` (the final move and its events, one transaction) of --endings queued jobs,
  with the owner's --endpoints endpoints subscribed (on) and turned off (off), alternating: median ms each.
- Jobs run for real (the runner, in this process, in a container of the runtime image; skipped without Docker):
  --jobs jobs per case, alternating on and off: median runner wall time (claim to result) and the ratio.

Figures only; never part of the test run.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.local_django import setup_django  # noqa: E402 - the root goes on the path first

CODE = b"def handler(event, context):\n    return {'n': event}\n"


class _Accept(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def _setup_django(workdir: str) -> None:
    setup_django(workdir, JOB_WORK_ROOT=f"{workdir}/jobs", REDIS_URL="", CELERY_BROKER_URL="filesystem://",
                 OUTBOUND_ALLOWED_NETWORKS="127.0.0.1/32", USAGE_EXPORT_URL="")
    import infra_ainode.celery  # noqa: F401  (the app that publishes, with the broker's folders made)

    Path(f"{workdir}/jobs").mkdir()


def _owner(url: str, endpoints: int) -> tuple[Any, Any]:
    from django.contrib.auth.models import User

    from jobs import services
    from models_catalog.models import AINode, ModelCatalog
    from outbound.models import JOB_EVENT_TYPES
    from outbound.services import create_endpoint

    # The jobs call no model, but the runner routes their model: a catalogue row where nothing listens will do.
    node = AINode.objects.create(name="bench", kind="openai", url="http://127.0.0.1:9", queue="jobs")
    ModelCatalog.objects.create(node=node, model_id="smollm2:135m", name="smollm2:135m")
    owner = User.objects.create_user(username="bench")
    for _ in range(endpoints):
        create_endpoint(owner=owner, url=url, event_types=list(JOB_EVENT_TYPES))
    return owner, services.deploy_function(owner=owner, name="bench", code=CODE, timeout_seconds=60)


def _queued_job(owner: Any, function: Any) -> str:
    from jobs import services

    return str(services.create_job(owner=owner, function=function, function_version=function.current_version,
                                   model_id="smollm2:135m", node="bench", queue="jobs", input_data=1,
                                   memory_mb=function.memory_mb, timeout_seconds=function.timeout_seconds).pk)


def _webhooks(on: bool) -> None:
    from outbound.models import WebhookEndpoint

    WebhookEndpoint.objects.update(active=on)


def throughput(owner: Any, events: int, slots: int) -> tuple[float, float]:
    """(events/s, median attempt ms) of delivering `events` events from `slots` threads."""
    from django.db import connections, transaction

    from outbound.delivery import deliver
    from outbound.models import DeliveryAttempt, Event
    from outbound.services import record

    _webhooks(True)
    Event.objects.all().delete()
    with transaction.atomic():
        for n in range(events):
            record(owner_id=owner.pk, event_type="job.succeeded", data=lambda n=n: {"n": n})
    todo: SimpleQueue[int] = SimpleQueue()
    for pk in Event.objects.order_by("pk").values_list("pk", flat=True):
        todo.put(pk)

    def slot() -> None:
        try:
            while True:
                deliver(todo.get_nowait())
        except Empty:
            pass
        finally:
            connections.close_all()

    started = time.perf_counter()
    threads = [threading.Thread(target=slot) for _ in range(slots)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    delivered = Event.objects.filter(status="delivered").count()
    assert delivered == Event.objects.count(), "some events were not delivered"
    return delivered / seconds, statistics.median(DeliveryAttempt.objects.values_list("duration_ms", flat=True))


def endings(owner: Any, function: Any, count: int) -> dict[bool, float]:
    """Median ms of end_job with webhooks on and off, alternating."""
    from jobs.endings import end_job

    times: dict[bool, list[float]] = {True: [], False: []}
    for n in range(count):
        on = n % 2 == 0
        _webhooks(on)
        job_id = _queued_job(owner, function)
        started = time.perf_counter()
        end_job(job_id, "failed", error_code="bench")
        times[on].append((time.perf_counter() - started) * 1000)
    return {on: statistics.median(values) for on, values in times.items()}


def jobs(owner: Any, function: Any, count: int) -> dict[bool, float] | None:
    """Median runner wall ms of real jobs with webhooks on and off, alternating; None without Docker."""
    from jobs.models import Job
    from jobs.runner import run_job

    times: dict[bool, list[float]] = {True: [], False: []}
    try:
        run_job(_queued_job(owner, function))  # warm-up: the image's cache, imports
    except Exception as exc:  # no engine, no image: this part is skipped
        print(f"real jobs: skipped ({exc})")
        return None
    for n in range(count * 2):
        on = n % 2 == 0
        _webhooks(on)
        job_id = _queued_job(owner, function)
        started = time.perf_counter()
        run_job(job_id)
        times[on].append((time.perf_counter() - started) * 1000)
        assert Job.objects.get(pk=job_id).status == "succeeded"
    return {on: statistics.median(values) for on, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--slots", default="1,4", help="delivery threads at once, comma-separated")
    parser.add_argument("--endings", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--endpoints", type=int, default=3)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="whb-")
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Accept)
    receiver.daemon_threads = True
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        _setup_django(workdir)
        owner, function = _owner(f"http://127.0.0.1:{receiver.server_address[1]}/hook", args.endpoints)
        print(f"delivery throughput: {args.events} events to a receiver on 127.0.0.1 (SQLite)")
        base = None
        for slots in (int(s) for s in args.slots.split(",")):
            rate, attempt_ms = throughput(owner, args.events, slots)
            base = base or rate
            print(f"  {slots} slot(s): {rate:7.0f} events/s  ({rate / base:.2f}x one slot), median attempt "
                  f"{attempt_ms:.0f} ms")
        ends = endings(owner, function, args.endings)
        print(f"a job's end (end_job), {args.endpoints} endpoints subscribed, median of {args.endings // 2} each:")
        print(f"  off {ends[False]:.2f} ms, on {ends[True]:.2f} ms: +{ends[True] - ends[False]:.2f} ms "
              f"({ends[True] / ends[False]:.2f}x)")
        ran = jobs(owner, function, args.jobs)
        if ran is not None:
            print(f"real jobs (runner wall time, claim to result), median of {args.jobs} each:")
            print(f"  off {ran[False]:.0f} ms, on {ran[True]:.0f} ms: +{ran[True] - ran[False]:.0f} ms "
                  f"({ran[True] / ran[False]:.3f}x)")
    finally:
        receiver.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
