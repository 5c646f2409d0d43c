"""Real `celery worker` subprocesses on the test database (pytest-django's) and a broker of the test's."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.support import REPO_ROOT, VENV_BIN
from tests.support.brokers import Broker
from tests.support.waiting import wait_for

CELERY = VENV_BIN / "celery" if (VENV_BIN / "celery").exists() else Path(sys.executable).with_name("celery")
WORKER_START_TIMEOUT = 60.0


def database_url() -> str:
    """The URL of the database this test run uses (pytest-django's test database), for a worker process."""
    from django.db import connection

    conf = connection.settings_dict
    if conf["ENGINE"].endswith("sqlite3"):
        name = str(conf["NAME"])
        assert name and ":memory:" not in name and "mode=memory" not in name, (
            "a worker cannot open an in-memory SQLite database; settings give the test database a file name")
        return f"sqlite:///{Path(name).resolve()}"
    if conf["ENGINE"].endswith("postgresql"):
        credentials = quote(conf["USER"] or "", safe="")
        if conf.get("PASSWORD"):
            credentials += ":" + quote(conf["PASSWORD"], safe="")
        host = conf.get("HOST") or "127.0.0.1"
        port = conf.get("PORT") or "5432"
        return f"postgres://{credentials}@{host}:{port}/{conf['NAME']}"
    raise NotImplementedError(f"no worker URL for database engine {conf['ENGINE']}")


def worker_env(broker: Broker, worker_id: str, **extra_env: Any) -> dict[str, str]:
    """The environment of a worker on the test database and `broker`; `extra_env` is added (values as text)."""
    from django.conf import settings

    env = {key: value for key, value in os.environ.items() if not key.startswith(("CELERY_", "SQS_"))}
    env.update({
        "DJANGO_SETTINGS_MODULE": "infra_ainode.settings",
        "DATABASE_URL": database_url(),
        "WORKER_ID": worker_id,
        "REDIS_URL": settings.REDIS_URL,
        "JOB_RUNTIME_IMAGE": settings.JOB_RUNTIME_IMAGE,
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "INFO",
    })
    env.update(broker.env)
    env.update({key: str(value) for key, value in extra_env.items()})
    (broker.var_dir / "jobs").mkdir(parents=True, exist_ok=True)
    return env


@dataclass
class Worker:
    """A real `celery worker` subprocess."""

    worker_id: str
    log_path: Path
    env: dict[str, str]
    app: str = "infra_ainode"  # the Celery app's module (a test may give one that injects a fault)
    process: subprocess.Popen | None = None
    _log: Any = field(default=None, repr=False)

    def start(self, *, wait_ready: bool = True) -> "Worker":
        # WORKER_QUEUES (a comma-separated list) names the queues a worker consumes, by default the jobs' queue.
        queues = self.env.get("WORKER_QUEUES") or self.env.get("JOB_QUEUE", "jobs")
        command = [str(CELERY), "-A", self.app, "worker", "-Q", queues, "-c", "1",
                   "-P", "solo", "--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "info",
                   "-n", f"{self.worker_id}@%h"]
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, env=self.env, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, f"the worker exited at start-up:\n{self.log()}"
            return " ready." in self.log()

        wait_for(ready, timeout=WORKER_START_TIMEOUT, interval=0.2, message=f"worker {self.worker_id} to be ready")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self, since: int = 0) -> str:
        """The worker's output, from byte `since` on (see `log_size`)."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as log:
            log.seek(since)
            return log.read().decode(errors="replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def kill(self) -> None:
        """SIGKILL: the worker dies at once, as on a crash; it cannot tidy anything up."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self._close_log()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (Celery's warm shutdown: the current task finishes), then SIGKILL if it takes too long.

        Over the filesystem transport this takes 2 to 4 s even when the worker is idle: Celery's blocking loop for
        transports without async I/O (`celery.worker.loops.synloop`) looks at the shutdown flag only between
        `drain_events(timeout=2.0)` calls, which poll the folder until their 2 s are up, and it polls once more
        (in a `finally`) after it has seen the flag. A worker whose test is over has nothing to finish: the
        fixtures `kill()` it instead.
        """
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGKILL)
                self.process.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
