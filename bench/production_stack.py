"""A production-shaped stack of the bench's own, in a throw-away folder: a PostgreSQL server of its own
(tests/support/private_postgres.py), moto_server for SQS, the dev AI node (llama.cpp, whose /metrics counts the tokens
it generated), gunicorn (2 processes) and one Celery worker (WORKER_PROCESSES processes, with the outbox relay).
Used by bench/chaos.py and bench/fairness.py; the Docker engine is the machine's."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from tests.support.brokers import MOTO_HOST, MOTO_SERVER, moto_answers
from tests.support.ports import free_port
from tests.support.private_postgres import PrivatePostgres

REPO_ROOT = Path(__file__).resolve().parent.parent
PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
CELERY = REPO_ROOT / ".venv" / "bin" / "celery"
GUNICORN = REPO_ROOT / ".venv" / "bin" / "gunicorn"
MODEL = "smollm2:135m"  # the dev node's
TERMINAL = ("succeeded", "failed", "timed_out", "cancelled")


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
    """PostgreSQL, SQS, the node, gunicorn and one worker of `worker_processes`, as production runs them, in `folder`;
    the jobs' work root on a tmpfs of `work_root_mb` (None: a plain folder). `env` is added to every process's."""

    def __init__(self, folder: Path, *, work_root_mb: int | None = None, worker_processes: int = 2,
                 env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.database = PrivatePostgres()
        self.moto = Moto(folder)
        self.node = Node(folder)
        self.work_root = folder / "work"
        self.work_root_mb, self.worker_processes = work_root_mb, worker_processes
        self.web_port = free_port()
        self.prefix = f"bench{uuid.uuid4().hex[:8]}-"
        self.processes: list[subprocess.Popen] = []
        self.env: dict[str, str] = {}
        self.extra_env = env or {}

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self, *users: str) -> list[str]:
        """Start everything; returns an API key for each of `users` (made now)."""
        self.database.start()
        self.moto.start()
        self.node.start()
        self.work_root.mkdir()
        if self.work_root_mb is not None:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.work_root_mb}m,mode=0755", "tmpfs",
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
                    "PROMETHEUS_MULTIPROC_DIR": str(self.folder / "metrics"), **self.extra_env}
        self.manage("migrate", "--noinput", "-v0")
        self.manage("sync_models")
        keys = [self.manage("create_api_key", user).strip().splitlines()[-1] for user in users]
        self.start_app()
        return keys

    def start_app(self, **env: str) -> None:
        """Start gunicorn and the worker, with `env` added to their environment."""
        log_path = self.folder / "stack.log"
        log_path.touch()
        since = log_path.stat().st_size
        app_env = {**self.env, **env}
        log = open(log_path, "ab")
        self.processes = [
            subprocess.Popen([str(GUNICORN), "--config", "infra_ainode/gunicorn.conf.py", "infra_ainode.wsgi"],
                             cwd=REPO_ROOT, env=app_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True),
            subprocess.Popen([str(CELERY), "-A", "infra_ainode", "worker", "-Q", "jobs", "-c",
                              str(self.worker_processes), "-l", "info", "--without-gossip", "--without-mingle",
                              "-n", f"bench-{uuid.uuid4().hex[:6]}@%h"],
                             cwd=REPO_ROOT, env=app_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True),
        ]
        wait_until(lambda: http("GET", self.base + "/healthz", timeout=2)[0] == 200, 60, "gunicorn")
        wait_until(lambda: b" ready." in log_path.read_bytes()[since:], 60, "the worker")

    def stop_app(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.processes = []

    def manage(self, *args: str) -> str:
        return subprocess.run([str(PYTHON), "manage.py", *args], cwd=REPO_ROOT, env=self.env, check=True,
                              capture_output=True, text=True).stdout

    def make_job_queue(self) -> None:
        import boto3

        boto3.client("sqs", endpoint_url=f"http://{MOTO_HOST}:{self.moto.port}", region_name="us-east-1",
                     aws_access_key_id="x", aws_secret_access_key="x").create_queue(QueueName=self.prefix + "jobs")

    def stop(self) -> None:
        self.stop_app()
        for process in (self.moto.process, self.node.process):
            if process is not None and process.poll() is None:
                process.kill()
        if self.work_root_mb is not None:
            subprocess.run(["umount", "-l", str(self.work_root)], check=False)
        self.database.remove()
