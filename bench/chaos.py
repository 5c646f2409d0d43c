"""Faults on real parts under a steady load of jobs that call the model, and what each fault costs.

    .venv/bin/python bench/chaos.py [--faults postgres,sqs,disk,node,engine] [--rate 2] [--before 5] [--down 5]
                                    [--after 10] [--drain 240]

It starts a production-shaped stack of its own in a throw-away folder: a PostgreSQL server of its own
(tests/support/private_postgres.py), moto_server for SQS, the dev AI node (llama.cpp, whose /metrics counts the
tokens it generated), gunicorn (2 processes) and one Celery worker (2 processes, with the outbox relay), the jobs'
work root on a 64 MB tmpfs. The Docker engine is the machine's: the engine fault kills the real dockerd and starts
it again with scripts/services.sh (run it when nothing else uses the engine).

For each fault in turn: a steady load of asynchronous jobs (`--rate` a second, each making one 4-token call to the
model) for `--before` s; the fault; `--down` s later the dependency is back; the load goes on for `--after` s; then
it waits (at most `--drain` s) for every admitted job to end. Per fault it prints: submits and how they were
answered, jobs admitted, succeeded, failed by code, delivered more than once, run twice (more than one answered
call on the ledger: each run makes one), lost (admitted but never ended), stuck (queued or running at the end), the seconds from
the dependency answering again to the first job that ended well after it, and the completion tokens billed against
the node's own counter over the fault's window. Figures only; nothing is asserted.

The faults: `postgres` SIGKILL of the postmaster, started again; `sqs` SIGKILL of moto_server, started again on
its port (a new moto has lost its queues, which real SQS never does: the bench makes the job queue again); `disk`
the work root filled to the last byte, then emptied; `node` SIGKILL of the AI node, started again on its ports;
`engine` SIGKILL of dockerd, started again.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.support.brokers import MOTO_HOST, MOTO_SERVER, moto_answers  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.private_postgres import PrivatePostgres  # noqa: E402

PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
CELERY = REPO_ROOT / ".venv" / "bin" / "celery"
GUNICORN = REPO_ROOT / ".venv" / "bin" / "gunicorn"
ONE_CALL = ("import ai_client\n"
            "def handler(event, context):\n"
            "    ai_client.generate('Count from one to ten.', max_tokens=4, temperature=0, seed=1)\n"
            "    return event\n")
MODEL = "smollm2:135m"  # the dev node's
TERMINAL = ("succeeded", "failed", "timed_out", "cancelled")
FAULTS = ("postgres", "sqs", "disk", "node", "engine")
WORK_ROOT_MB = 64


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def http(method: str, url: str, *, key: str = "", body: dict | None = None, headers: dict | None = None,
         timeout: float = 30) -> tuple[int, object]:
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json", **(headers or {}),
                                              **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw.startswith((b"{", b"[")) else raw.decode()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw.startswith(b"{") else raw.decode(errors="replace")
    except OSError as exc:
        return 0, {"code": type(exc).__name__}


class Node:
    """The dev AI node on ports of its own; its counter survives restarts (summed over its lives)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port, self.ollama_port = folder, free_port(), free_port()
        self.process: subprocess.Popen | None = None
        self.counted_before = 0  # by its earlier lives

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.folder / "node.log", "ab")
        self.process = subprocess.Popen(
            [str(PYTHON), "-m", "devnode", "--port", str(self.port), "--ollama-port", str(self.ollama_port),
             "--model-dir", str(REPO_ROOT / "var" / "models"), "--pid-file", str(self.folder / "node.pid"),
             "--parallel", "2"], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: http("GET", self.url + "/health", timeout=2)[0] == 200, 120, "the AI node")

    def generated(self) -> int:
        """Completion tokens the node says it generated, over all its lives."""
        status, text = http("GET", self.url + "/metrics", timeout=5)
        match = re.search(r"^llamacpp:tokens_predicted_total\s+(\S+)", text if isinstance(text, str) else "", re.M)
        return self.counted_before + (int(float(match.group(1))) if status == 200 and match else 0)

    def kill(self) -> None:
        self.counted_before = self.generated()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


class Moto:
    def __init__(self, folder: Path) -> None:
        self.folder, self.port, self.process = folder, free_port(), None

    def start(self) -> None:
        log = open(self.folder / "moto.log", "ab")
        self.process = subprocess.Popen([str(MOTO_SERVER), "-H", MOTO_HOST, "-p", str(self.port)], stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: moto_answers(MOTO_HOST, self.port), 30, "moto_server")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


class Stack:
    """PostgreSQL, SQS, the node, gunicorn and one worker, as production runs them, in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.database = PrivatePostgres()
        self.moto = Moto(folder)
        self.node = Node(folder)
        self.work_root = folder / "work"
        self.web_port = free_port()
        self.prefix = f"chaos{uuid.uuid4().hex[:8]}-"
        self.processes: list[subprocess.Popen] = []
        self.env: dict[str, str] = {}

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> str:
        """Start everything; returns an API key of the load's user."""
        self.database.start()
        self.moto.start()
        self.node.start()
        self.work_root.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={WORK_ROOT_MB}m,mode=0755", "tmpfs",
                        str(self.work_root)], check=True)
        (self.folder / "metrics").mkdir()
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "SQS_"))},
                    "DJANGO_SETTINGS_MODULE": "infra_ainode.settings", "DATABASE_URL": self.database.url,
                    "VAR_DIR": str(self.folder / "var"), "REDIS_URL": "",
                    "CELERY_BROKER_URL": f"sqs://x:x@{MOTO_HOST}:{self.moto.port}", "AWS_REGION": "us-east-1",
                    "SQS_IS_SECURE": "false", "SQS_QUEUE_PREFIX": self.prefix, "SQS_WAIT_TIME_SECONDS": "1",
                    "SQS_VISIBILITY_TIMEOUT": "600", "AI_NODE_URL": self.node.url, "AI_NODE_KIND": "openai",
                    "MODEL_SYNC_INTERVAL": "0", "JOB_WORK_ROOT": str(self.work_root),
                    "WEB_BIND": f"127.0.0.1:{self.web_port}", "WEB_WORKERS": "2",
                    "PROMETHEUS_MULTIPROC_DIR": str(self.folder / "metrics")}
        self.manage("migrate", "--noinput", "-v0")
        self.manage("sync_models")
        key = self.manage("create_api_key", "chaos").strip().splitlines()[-1]
        log = open(self.folder / "stack.log", "ab")
        self.processes.append(subprocess.Popen(
            [str(GUNICORN), "--config", "infra_ainode/gunicorn.conf.py", "infra_ainode.wsgi"], cwd=REPO_ROOT,
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        self.processes.append(subprocess.Popen(
            [str(CELERY), "-A", "infra_ainode", "worker", "-Q", "jobs", "-c", "2", "-l", "info",
             "--without-gossip", "--without-mingle", "-n", f"chaos-{uuid.uuid4().hex[:6]}@%h"],
            cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        wait_until(lambda: http("GET", self.base + "/healthz", timeout=2)[0] == 200, 60, "gunicorn")
        wait_until(lambda: b" ready." in (self.folder / "stack.log").read_bytes(), 60, "the worker")
        return key

    def manage(self, *args: str) -> str:
        return subprocess.run([str(PYTHON), "manage.py", *args], cwd=REPO_ROOT, env=self.env, check=True,
                              capture_output=True, text=True).stdout

    def make_job_queue(self) -> None:
        import boto3

        boto3.client("sqs", endpoint_url=f"http://{MOTO_HOST}:{self.moto.port}", region_name="us-east-1",
                     aws_access_key_id="x", aws_secret_access_key="x").create_queue(QueueName=self.prefix + "jobs")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        for process in (self.moto.process, self.node.process):
            if process is not None and process.poll() is None:
                process.kill()
        subprocess.run(["umount", "-l", str(self.work_root)], check=False)
        self.database.remove()


# --- the faults: each injects, then brings the dependency back and returns when it answers ----------------------

def fault_postgres(stack: Stack, down: float) -> None:
    stack.database.crash()
    time.sleep(down)
    stack.database.start()


def fault_sqs(stack: Stack, down: float) -> None:
    stack.moto.kill()
    time.sleep(down)
    stack.moto.start()
    stack.make_job_queue()


def fault_disk(stack: Stack, down: float) -> None:
    filler = stack.work_root / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", f"count={WORK_ROOT_MB * 2}"],
                   capture_output=True)
    time.sleep(down)
    filler.unlink()


def fault_node(stack: Stack, down: float) -> None:
    stack.node.kill()
    time.sleep(down)
    stack.node.start()


def fault_engine(stack: Stack, down: float) -> None:
    os.kill(int(Path("/var/run/docker.pid").read_text()), signal.SIGKILL)
    time.sleep(down)
    subprocess.run(["bash", "scripts/services.sh", "docker"], cwd=REPO_ROOT, check=True, capture_output=True)


# --- the load and the report -------------------------------------------------------------------------------------

class Load:
    """Submits an asynchronous job every 1/`rate` s from its own thread until stopped."""

    def __init__(self, stack: Stack, key: str, function_id: str, rate: float) -> None:
        self.stack, self.key, self.function_id, self.rate = stack, key, function_id, rate
        self.answers: list[tuple[int, object]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            started = time.monotonic()
            self.answers.append(http("POST", self.stack.base + "/run", key=self.key, timeout=15,
                                     body={"functionId": self.function_id, "modelId": MODEL, "inputData": n},
                                     headers={"X-Async": "true"}))
            n += 1
            self._stop.wait(max(0.0, 1 / self.rate - (time.monotonic() - started)))


def run_fault(stack: Stack, key: str, function_id: str, name: str, args: argparse.Namespace) -> dict:
    generated_before = stack.node.generated()
    load = Load(stack, key, function_id, args.rate).start()
    time.sleep(args.before)
    globals()[f"fault_{name}"](stack, args.down)
    back_at = datetime.now(timezone.utc)
    time.sleep(args.after)
    load.stop()
    admitted = [body["jobId"] for status, body in load.answers if status == 202]
    refused = Counter(f"{status} {body.get('code', '') if isinstance(body, dict) else ''}".strip()
                      for status, body in load.answers if status != 202)
    deadline = time.monotonic() + args.drain
    while time.monotonic() < deadline:
        ended = stack.database.rows("SELECT count(*) FROM jobs_job WHERE id = ANY(%s::uuid[]) AND status = ANY(%s)",
                           (admitted, list(TERMINAL)))[0][0]
        if ended == len(admitted):
            break
        time.sleep(1)
    by_status = Counter({(status, code): count for status, code, count in stack.database.rows(
        "SELECT status, error_code, count(*) FROM jobs_job WHERE id = ANY(%s::uuid[]) GROUP BY 1, 2", (admitted,))})
    known = sum(by_status.values())
    retried = stack.database.rows("SELECT count(*) FROM jobs_job WHERE id = ANY(%s::uuid[]) AND deliveries > 1",
                         (admitted,))[0][0]
    # A run makes one call that answers (the SDK may try again a call that failed: one row each).
    twice = stack.database.rows("SELECT count(*) FROM (SELECT job_id FROM jobs_llmcall WHERE job_id = ANY(%s::uuid[]) "
                       "AND status = 'ok' GROUP BY job_id HAVING count(*) > 1) AS more", (admitted,))[0][0]
    first_end = stack.database.rows("SELECT min(finished_at) FROM jobs_job WHERE id = ANY(%s::uuid[]) "
                           "AND status = 'succeeded' AND finished_at > %s", (admitted, back_at))[0][0]
    billed = stack.database.rows("SELECT coalesce(sum(completion_tokens), 0) FROM jobs_llmcall "
                        "WHERE job_id = ANY(%s::uuid[])", (admitted,))[0][0]
    return {
        "fault": name, "submits": len(load.answers), "refused": dict(refused), "admitted": len(admitted),
        "succeeded": by_status.get(("succeeded", ""), 0),
        "failed": {f"{status} {code}".strip(): count for (status, code), count in by_status.items()
                   if status != "succeeded" and status in TERMINAL},
        "retried": retried, "run_twice": twice, "lost": len(admitted) - known,
        "stuck": sum(count for (status, _), count in by_status.items() if status not in TERMINAL),
        "recovery_s": (first_end - back_at).total_seconds() if first_end else None,
        "tokens_billed": billed, "tokens_node": stack.node.generated() - generated_before,
    }


def print_table(results: list[dict]) -> None:
    print("\n| fault | submits (refused) | admitted | succeeded | failed | retried | run twice | lost | stuck "
          "| recovery | completion tokens billed / node |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        refused = ", ".join(f"{k}: {v}" for k, v in r["refused"].items()) or "none"
        failed = ", ".join(f"{k}: {v}" for k, v in r["failed"].items()) or "0"
        recovery = f"{r['recovery_s']:.1f} s" if r["recovery_s"] is not None else "none"
        print(f"| {r['fault']} | {r['submits']} ({refused}) | {r['admitted']} | {r['succeeded']} | {failed} "
              f"| {r['retried']} | {r['run_twice']} | {r['lost']} | {r['stuck']} | {recovery} "
              f"| {r['tokens_billed']} / {r['tokens_node']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", default="postgres,sqs,disk,node,engine")
    parser.add_argument("--rate", type=float, default=2.0, help="jobs submitted a second")
    parser.add_argument("--before", type=float, default=5.0, help="seconds of load before the fault")
    parser.add_argument("--down", type=float, default=5.0, help="seconds the dependency is down")
    parser.add_argument("--after", type=float, default=10.0, help="seconds of load once it is back")
    parser.add_argument("--drain", type=float, default=240.0, help="the longest wait for the jobs to end")
    args = parser.parse_args()
    faults = [name for name in args.faults.split(",") if name]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise SystemExit(f"unknown faults: {', '.join(sorted(unknown))} (known: {', '.join(FAULTS)})")
    if os.geteuid() != 0:
        raise SystemExit("run as root: the bench mounts a tmpfs and, for the engine fault, kills dockerd")
    folder = Path(tempfile.mkdtemp(prefix="ainode-chaos-"))
    stack = Stack(folder)
    results = []
    try:
        key = stack.start()
        status, function = http("POST", stack.base + "/api/v1/functions/", key=key,
                                body={"name": "chaos", "code": ONE_CALL})
        if status != 201:
            raise SystemExit(f"deploy answered {status}: {function}")
        for name in faults:
            print(f"fault {name}: {args.before:.0f} s of load, {args.down:.0f} s down, {args.after:.0f} s after",
                  flush=True)
            result = run_fault(stack, key, function["functionId"], name, args)
            print("  " + json.dumps(result), flush=True)
            results.append(result)
    finally:
        stack.stop()
        print(f"(logs in {folder})")
    print_table(results)


if __name__ == "__main__":
    main()
