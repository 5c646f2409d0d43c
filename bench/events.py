"""What watching a job costs the job: a chatty job (10,000 lines) run with no listener, with one listener that
reads the live stream, and with one listener that connected and stopped reading.

    .venv/bin/python bench/events.py [--lines 10000] [--rounds 3] [--redis redis://127.0.0.1:6379/15]

Jobs run for real (the runner, in this process, in a container of the runtime image) in a throw-away SQLite
database; the listeners follow them over HTTP from the web API in a process of its own (`manage.py runserver`):
a reading listener is `curl -N` (another process), a stalled one a socket here that asked and never reads.
Rounds alternate the three cases so that all see the same machine. For each case it prints the median of the
runner's wall time (claim to result) and of the container's own duration, and their ratio to the case without a
listener; then how many events a job made. It prints figures only.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.local_django import REPO_ROOT, setup_django  # noqa: E402 - the root goes on the path first

CHATTY = "for n in range({lines}):\n    print(f'line {{n:06d}} of a chatty job', flush=True)\n"


def _setup_django(workdir: str, redis_url: str | None) -> None:
    setup_django(workdir, JOB_WORK_ROOT=f"{workdir}/jobs", REDIS_URL=redis_url or "")
    Path(f"{workdir}/jobs").mkdir()


def _owner_and_key() -> tuple[Any, str]:
    from django.contrib.auth.models import User

    from accounts.services import create_api_key
    from models_catalog.models import AINode, ModelCatalog

    # The jobs call no model, but the runner routes their model: a catalogue row where nothing listens will do.
    node = AINode.objects.create(name="bench", kind="openai", url="http://127.0.0.1:9", queue="jobs")
    ModelCatalog.objects.create(node=node, model_id="smollm2:135m", name="smollm2:135m")
    owner = User.objects.create_user(username="bench")
    _, key = create_api_key(user=owner, name="bench")
    return owner, key


def _queued_job(owner: Any, lines: int) -> str:
    from jobs import services

    function = services.deploy_function(owner=owner, name=f"chatty-{uuid.uuid4().hex[:6]}",
                                        code=CHATTY.format(lines=lines).encode(), timeout_seconds=300)
    job = services.create_job(owner=owner, function=function, function_version=function.current_version,
                              model_id="smollm2:135m", node="bench", queue="jobs", input_data=None,
                              memory_mb=function.memory_mb, timeout_seconds=function.timeout_seconds)
    return str(job.pk)


def _serve(workdir: str) -> tuple[str, subprocess.Popen]:
    """The web API in a process of its own (`manage.py runserver`), as in a deployment: the listeners' work must
    not share this process (and its interpreter lock) with the runner that reads the job's output."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(f"{workdir}/web.log", "wb")
    web = subprocess.Popen([sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
                           cwd=REPO_ROOT, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return url, web
        except OSError:
            if time.monotonic() > deadline or web.poll() is not None:
                raise RuntimeError(f"the web server did not start; see {workdir}/web.log") from None
            time.sleep(0.2)


def _listen(url: str, key: str, job_id: str) -> subprocess.Popen:
    """A reading listener in a process of its own: curl -N, which prints the stream as it comes."""
    return subprocess.Popen(["curl", "-sN", "-H", f"Authorization: Bearer {key}",
                             f"{url}/api/v1/jobs/{job_id}/events"], stdout=subprocess.PIPE)


def _stall(url: str, key: str, job_id: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(f"GET /api/v1/jobs/{job_id}/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                 f"Accept: text/event-stream\r\n\r\n".encode())
    return sock


def _run(case: str, owner: Any, key: str, url: str, lines: int) -> tuple[float, float, int]:
    """(runner wall ms, container ms, events written) of one job run in `case`."""
    from jobs.events.store import event_store
    from jobs.models import Job
    from jobs.runner import run_job

    job_id = _queued_job(owner, lines)
    listener = _listen(url, key, job_id) if case == "reading listener" else None
    stalled = _stall(url, key, job_id) if case == "stalled listener" else None
    time.sleep(0.3)  # the listener is connected and polling before the job starts
    started = time.perf_counter()
    run_job(job_id)
    wall_ms = (time.perf_counter() - started) * 1000
    job = Job.objects.get(pk=job_id)
    assert job.status == "succeeded", (job.error_code, job.error_message)
    if listener is not None:
        stream, _ = listener.communicate(timeout=60)
        assert b"\nevent: result\n" in stream, "the listener did not get the whole stream"
    if stalled is not None:
        stalled.close()
    written = len(event_store().read(job_id, after=None, wait=0))
    return wall_ms, float(job.duration_ms or 0), written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", default=None, help="keep events in Redis streams at this URL")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="evb-")
    web: subprocess.Popen | None = None
    try:
        _setup_django(workdir, args.redis)
        owner, key = _owner_and_key()
        url, web = _serve(workdir)
        cases = ("no listener", "reading listener", "stalled listener")
        figures: dict[str, list[tuple[float, float, int]]] = {case: [] for case in cases}
        _run("no listener", owner, key, url, args.lines)  # warm-up: image cache, imports
        for _ in range(args.rounds):
            for case in cases:
                figures[case].append(_run(case, owner, key, url, args.lines))
        store = "Redis streams" if args.redis else "JobEvent table (SQLite)"
        print(f"chatty job: {args.lines} lines; events in the {store}; median of {args.rounds} rounds")
        base_wall = statistics.median(f[0] for f in figures["no listener"])
        base_run = statistics.median(f[1] for f in figures["no listener"])
        print(f"{'case':<18} {'runner wall ms':>15} {'ratio':>6} {'container ms':>13} {'ratio':>6} {'events':>7}")
        for case in cases:
            wall = statistics.median(f[0] for f in figures[case])
            run = statistics.median(f[1] for f in figures[case])
            events = statistics.median(f[2] for f in figures[case])
            print(f"{case:<18} {wall:>15.0f} {wall / base_wall:>6.2f} {run:>13.0f} {run / base_run:>6.2f} "
                  f"{events:>7.0f}")
    finally:
        if web is not None:
            web.terminate()
            web.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
