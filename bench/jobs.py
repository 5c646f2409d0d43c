"""Jobs end to end, beside what the Docker engine alone does, with the warm pool off and on, in one run.

    .venv/bin/python bench/jobs.py [--sync 30] [--burst 200] [--concurrency 2] [--pool-sizes 0,2]
                                   [--model-burst 50] [--port 8105] [--gateway-calls 20]

It starts its own stack the way scripts/stack.sh does (the web API under `runserver`, one Celery worker with
`--concurrency` processes, SQLite and the filesystem broker, all in a throw-away folder), once per pool size, and
prints for each:
- a synchronous trivial job (the handler returns a constant) through `POST /run`: p50/p90, beside a bare
  `docker run` of the same image with the same hardening flags, taken alternately in the same run, and the ratio;
- a burst of `--burst` asynchronous trivial jobs: jobs/s until all are terminal, lost and failed counts, beside the
  rate at which the engine creates, starts, waits for and removes the same hardened container at the same
  concurrency (the limit for single-use containers), and the ratio; and the CPU per job of the worker, the web
  process, the engine's processes and the whole machine (which alone counts what runs inside the containers),
  beside the engine's processes and the whole machine per container of the engine's own run;
- a burst of `--model-burst` jobs making one 16-token model call each: jobs/s and completion tokens/s, beside the
  node's own tokens/s for the same calls made directly at the same concurrency (0 skips it).
Then the gateway's added latency per model call (bench/gateway_latency.py). Figures only; nothing is asserted.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import math
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
CELERY = REPO_ROOT / ".venv" / "bin" / "celery"
TRIVIAL = "def handler(event, context):\n    return 42\n"
MODEL_CALL = (
    "import ai_client\n"
    "def handler(event, context):\n"
    "    return ai_client.generate('Count from one to twenty.', temperature=0, seed=42, max_tokens=16)\n"
)
TERMINAL = ("succeeded", "failed", "timed_out", "cancelled")
ENGINE_PROCESSES = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "runc", "docker-init")


def _process_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, CPU seconds used by it and its reaped children)."""
    table = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        cpu = sum(int(value) for value in fields[11:15]) / tick  # utime, stime, cutime, cstime
        table[int(entry)] = (int(fields[1]), name, cpu)
    return table


def cpu_seconds(roots: list[int], names: tuple[str, ...] = ()) -> float:
    """CPU used so far by the processes `roots` and their descendants, plus every process called one of `names`."""
    table = _process_table()
    chosen = set(roots) | {pid for pid, (_, name, _) in table.items() if name in names}
    grew = True
    while grew:
        children = {pid for pid, (parent, _, _) in table.items() if parent in chosen} - chosen
        chosen |= children
        grew = bool(children)
    return sum(table[pid][2] for pid in chosen if pid in table)


def machine_cpu_seconds() -> float:
    """CPU used so far by the whole machine (every process and the kernel, from /proc/stat). The processes named in
    ENGINE_PROCESSES miss part of a container's cost: its shim is reparented to PID 1, which is charged with the
    shim and everything it ran (runc, the container's own processes) when it reaps it."""
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:]]
    idle, iowait = ticks[3], ticks[4]
    return (sum(ticks[:8]) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class Stack:
    """The web API and one worker on a fresh SQLite database and filesystem broker in `folder`."""

    def __init__(self, folder: Path, *, port: int, concurrency: int, pool_size: int):
        self.folder, self.port = folder, port
        self.env = {**os.environ, "VAR_DIR": str(folder), "DATABASE_URL": f"sqlite:///{folder}/db.sqlite3",
                    "CELERY_BROKER_URL": "filesystem://", "REDIS_URL": "", "WARM_POOL_SIZE": str(pool_size),
                    "MODEL_SYNC_INTERVAL": "0", "DJANGO_SETTINGS_MODULE": "infra_ainode.settings",
                    "JOB_WORK_ROOT": str(folder / "jobs")}
        self.concurrency = concurrency
        self.processes: list[subprocess.Popen] = []

    def start(self) -> Stack:
        subprocess.run([str(PYTHON), "manage.py", "migrate", "--noinput", "-v0"], cwd=REPO_ROOT, env=self.env,
                       check=True)
        log = open(self.folder / "stack.log", "ab")
        self.processes.append(subprocess.Popen(
            [str(CELERY), "-A", "infra_ainode", "worker", "-Q", "jobs", "-c", str(self.concurrency), "-l", "info",
             "--without-gossip", "--without-mingle", "-n", f"bench-{uuid.uuid4().hex[:6]}@%h"],
            cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        self.processes.append(subprocess.Popen(
            [str(PYTHON), "manage.py", "runserver", f"127.0.0.1:{self.port}", "--noreload"],
            cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 60
        while not (self._answers() and b" ready." in (self.folder / "stack.log").read_bytes()):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                self.stop()
                raise SystemExit(f"the stack did not start; see {self.folder / 'stack.log'}")
            time.sleep(0.2)
        return self

    def _answers(self) -> bool:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            connection.request("GET", "/api/v1/")
            connection.getresponse().read()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


class Api:
    def __init__(self, port: int, key: str):
        self.port, self.key = port, key

    def call(self, method: str, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        data = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, data, {"Authorization": f"Bearer {self.key}",
                                                "Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        answer = json.loads(response.read() or b"null")
        connection.close()
        return response.status, answer

    def deploy(self, code: str) -> str:
        status, body = self.call("POST", "/api/v1/functions/", {"name": f"bench-{uuid.uuid4().hex[:6]}", "code": code})
        if status != 201:
            raise SystemExit(f"deploy answered {status}: {body}")
        return body["functionId"]

    def run(self, function_id: str, *, asynchronous: bool = False) -> tuple[int, dict]:
        return self.call("POST", "/run", {"functionId": function_id, "inputData": None},
                         {"x-async": "true"} if asynchronous else None)


def owner_key(stack: Stack) -> str:
    """An API key for a fresh user, made with the project's own service in the stack's database."""
    script = ("from django.contrib.auth.models import User\n"
              "from accounts.services import create_api_key\n"
              "user = User.objects.create_user(username='bench')\n"
              "print(create_api_key(user=user, name='bench')[1])\n")
    out = subprocess.run([str(PYTHON), "manage.py", "shell", "-c", script], cwd=REPO_ROOT, env=stack.env,
                         check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


def wait_for_pool(stack: Stack, expected: int) -> None:
    from jobs.sandbox.docker_backend import POOL_LABEL, DockerBackend
    from jobs.sandbox.pool_containers import SLOT_LABEL

    backend = DockerBackend()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready = [c for c in backend.labelled(POOL_LABEL) if c["status"] == "running"
                 and c["labels"].get(SLOT_LABEL, "").startswith(str(stack.folder))]
        if len(ready) >= expected:
            return
        time.sleep(0.2)
    print(f"  (the pool did not reach {expected} ready containers in 60 s)")


def bare_docker_run(image: str, *, options: tuple[str, ...] = (), script: str = "pass") -> float:
    """Milliseconds of one `docker run` of `python3 -c script`, hardened as a job (plus `options`, e.g. a mount)."""
    started = time.perf_counter()
    tmpfs = "size=64m,mode=1777,noexec,nosuid,nodev"
    subprocess.run(["docker", "run", "--rm", "--network", "none", "--read-only", "--tmpfs", f"/tmp:{tmpfs}",
                    "--tmpfs", f"/job/out:{tmpfs}", "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
                    "--pids-limit", "64", "--memory", "256m", "--memory-swap", "256m", "--cpus", "1", "--ipc", "none",
                    "--init", "--user", "10001:10001", "--log-driver", "none", *options, image, "python3", "-c",
                    script], check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - started) * 1000


def sync_figures(api: Api, function_id: str, image: str, count: int) -> dict:
    for _ in range(3):  # warm both paths
        api.run(function_id)
        bare_docker_run(image)
    through, bare, errors = [], [], 0
    for _ in range(count):
        started = time.perf_counter()
        status, body = api.run(function_id)
        through.append((time.perf_counter() - started) * 1000)
        errors += status != 200 or body.get("status") != "succeeded"
        bare.append(bare_docker_run(image))
    return {"api_p50": statistics.median(through), "api_p90": percentile(through, 0.9),
            "bare_p50": statistics.median(bare), "bare_p90": percentile(bare, 0.9), "errors": errors}


def terminal_statuses(database: Path, job_ids: list[str], *, deadline: float) -> dict[str, str]:
    """Wait until every job in `job_ids` is terminal (or the deadline); read straight from the stack's SQLite file,
    so that watching costs the web process nothing."""
    wanted = {job_id.replace("-", "") for job_id in job_ids}
    statuses: dict[str, str] = {}
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=20) as connection:
        while len(statuses) < len(wanted) and time.monotonic() < deadline:
            rows = connection.execute(
                f"SELECT id, status FROM jobs_job WHERE status IN ({','.join('?' * len(TERMINAL))})", TERMINAL)
            statuses = {str(pk).replace("-", ""): status for pk, status in rows if str(pk).replace("-", "") in wanted}
            time.sleep(0.05)
    return statuses


def burst(api: Api, stack_db: Path, function_id: str, count: int, *, timeout: float = 600) -> dict:
    """Submit `count` asynchronous jobs as fast as 8 connections can, then wait until all are terminal."""
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: api.run(function_id, asynchronous=True), range(count)))
    job_ids = [body["jobId"] for status, body in answers if status == 202]
    refusals = {f"{status} {body.get('code') or body}" for status, body in answers if status != 202}
    if refusals:
        print(f"  refused submits: {', '.join(sorted(refusals))[:300]}")
    submitted = time.perf_counter() - started
    statuses = terminal_statuses(stack_db, job_ids, deadline=time.monotonic() + timeout)
    elapsed = time.perf_counter() - started
    return {"elapsed": elapsed, "submitted": submitted, "rate": len(statuses) / elapsed,
            "refused": count - len(job_ids),
            "lost": len(job_ids) - len(statuses), "failed": sum(s != "succeeded" for s in statuses.values()),
            "job_ids": job_ids}


def engine_rate(image: str, count: int, concurrency: int) -> float:
    """Containers per second that the engine creates, starts, waits for and removes, hardened as a job's."""
    from jobs.sandbox.docker_backend import DockerBackend
    from jobs.sandbox.spec import default_profile, hardened_spec, make_workdir_folders

    folder = Path(tempfile.mkdtemp(prefix="bench-engine-"))  # a work root of its own (0700), as JOB_WORK_ROOT
    slot = make_workdir_folders(folder / "w-bench").path
    spec = hardened_spec(default_profile(), slot, job_id="", env={}, with_input=True,
                         command=["python3", "-c", "pass"], timeout_seconds=60)
    backend = DockerBackend()

    def one(_: int) -> None:
        backend.run(spec.__class__(**{**spec.__dict__, "job_id": f"bench-{uuid.uuid4().hex[:12]}"}))

    try:
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(count)))
        return count / (time.perf_counter() - started)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def node_tokens_per_second(node_url: str, count: int, concurrency: int) -> float:
    model = json.loads(_get(node_url, "/v1/models"))["data"][0]["id"]
    body = json.dumps({"model": model, "prompt": "Count from one to twenty.", "max_tokens": 16, "temperature": 0,
                       "seed": 42}).encode()
    parts = urlsplit(node_url)

    def one(_: int) -> int:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        answer = json.loads(connection.getresponse().read())
        connection.close()
        return answer["usage"]["completion_tokens"]

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(one, range(count)))
    return tokens / (time.perf_counter() - started)


def _get(base: str, path: str) -> bytes:
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    connection.request("GET", path)
    data = connection.getresponse().read()
    connection.close()
    return data


def model_burst(api: Api, stack: Stack, count: int) -> dict:
    function_id = api.deploy(MODEL_CALL)
    figures = burst(api, stack.folder / "db.sqlite3", function_id, count)
    tokens = 0
    for job_id in figures["job_ids"]:
        status, body = api.call("GET", f"/status/{job_id}")
        tokens += body.get("completionTokens") or 0
    figures["tokens_per_second"] = tokens / figures["elapsed"]
    return figures


def measure(args: argparse.Namespace, pool_size: int, image: str) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bj-", dir="/tmp"))
    stack = Stack(folder, port=args.port, concurrency=args.concurrency, pool_size=pool_size).start()
    try:
        api = Api(args.port, owner_key(stack))
        status, _ = api.call("GET", "/models")  # fills the catalogue from the node
        function_id = api.deploy(TRIVIAL)
        if pool_size:
            wait_for_pool(stack, pool_size * args.concurrency)
        print(f"\nwarm pool {'off' if not pool_size else f'on, {pool_size} per worker process'} "
              f"(worker concurrency {args.concurrency})")
        sync = sync_figures(api, function_id, image, args.sync)
        print(f"  sync trivial job via POST /run   p50 {sync['api_p50']:6.0f} ms   p90 {sync['api_p90']:6.0f} ms"
              f"   ({sync['errors']} not succeeded)")
        print(f"  bare docker run, same flags      p50 {sync['bare_p50']:6.0f} ms   p90 {sync['bare_p90']:6.0f} ms")
        print(f"  ratio p50 {sync['api_p50'] / sync['bare_p50']:.2f}x   p90 {sync['api_p90'] / sync['bare_p90']:.2f}x")
        if pool_size:
            wait_for_pool(stack, pool_size * args.concurrency)
        worker, web = stack.processes[0].pid, stack.processes[1].pid

        def cpu() -> tuple[float, ...]:
            """CPU so far of the worker, the web process, the engine's processes and the whole machine."""
            return (cpu_seconds([worker]), cpu_seconds([web]), cpu_seconds([], ENGINE_PROCESSES),
                    machine_cpu_seconds())

        before = cpu()
        jobs = burst(api, stack.folder / "db.sqlite3", function_id, args.burst)
        after = cpu()
        engine = engine_rate(image, args.burst, args.concurrency)
        # The engine's own run: its processes and the whole machine, per container.
        engine_only = [(b - a) * 1000 / args.burst for a, b in zip(after[2:], cpu()[2:])]
        print(f"  burst of {args.burst} async trivial jobs   {jobs['rate']:6.2f} jobs/s  (all terminal after "
              f"{jobs['elapsed']:.1f} s; submitted in {jobs['submitted']:.1f} s; {jobs['lost']} lost, "
              f"{jobs['failed']} failed, {jobs['refused']} refused)")
        print(f"  engine create/start/remove, c={args.concurrency}  {engine:6.2f} containers/s   "
              f"ratio {jobs['rate'] / engine:.2f}x")
        per_job = [(b - a) * 1000 / args.burst for a, b in zip(before, after)]
        print(f"  CPU per burst job: worker {per_job[0]:.0f} ms, web {per_job[1]:.0f} ms, engine {per_job[2]:.0f} ms"
              f"  (the engine alone: {engine_only[0]:.0f} ms per container)")
        print(f"  the whole machine's CPU per burst job {per_job[3]:.0f} ms  (the engine alone: {engine_only[1]:.0f} ms"
              f" per container, with what runs inside it)")
        if args.model_burst:
            if pool_size:
                wait_for_pool(stack, pool_size * args.concurrency)
            calls = model_burst(api, stack, args.model_burst)
            node = node_tokens_per_second(args.node_url, args.model_burst, args.concurrency)
            print(f"  burst of {args.model_burst} jobs with one 16-token call   {calls['rate']:6.2f} jobs/s   "
                  f"{calls['tokens_per_second']:6.1f} tokens/s  ({calls['lost']} lost, {calls['failed']} failed)")
            print(f"  the node alone, same calls, c={args.concurrency}        {node:6.1f} tokens/s   "
                  f"ratio {calls['tokens_per_second'] / node:.2f}x")
    finally:
        stack.stop()
        if os.environ.get("BENCH_KEEP"):
            print(f"  (kept {folder})")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def runtime_image() -> str:
    """JOB_RUNTIME_IMAGE as the settings give it, with Django set up in this process (on an in-memory database)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "infra_ainode.settings")
    os.environ.setdefault("DATABASE_URL", "sqlite:///:memory:")
    sys.path.insert(0, str(REPO_ROOT))
    import django

    django.setup()
    from django.conf import settings

    return settings.JOB_RUNTIME_IMAGE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sync", type=int, default=30, help="synchronous jobs (and bare docker runs) to time")
    parser.add_argument("--burst", type=int, default=200, help="asynchronous jobs in the burst")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (and engine threads)")
    parser.add_argument("--pool-sizes", default="0,2", help="WARM_POOL_SIZE values to measure, comma-separated")
    parser.add_argument("--model-burst", type=int, default=50, help="jobs making one model call each (0: skip)")
    parser.add_argument("--gateway-calls", type=int, default=20, help="calls for bench/gateway_latency.py (0: skip)")
    parser.add_argument("--node-url", default=os.environ.get("AI_NODE_URL", "http://127.0.0.1:8090"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("WEB_PORT", "8105")))
    args = parser.parse_args()
    image = runtime_image()
    print(f"{os.cpu_count()} CPUs; image {image}; node {args.node_url}")
    for size in (int(value) for value in args.pool_sizes.split(",")):
        measure(args, size, image)
    if args.gateway_calls:
        print("\ngateway added latency (bench/gateway_latency.py)")
        out = subprocess.run([str(PYTHON), str(REPO_ROOT / "bench" / "gateway_latency.py"), "--calls",
                              str(args.gateway_calls), "--node-url", args.node_url],
                             cwd=REPO_ROOT, capture_output=True, text=True)
        print("  " + "\n  ".join((out.stdout + out.stderr).strip().splitlines()))


if __name__ == "__main__":
    main()
