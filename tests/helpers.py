"""Helpers for the tests: plain functions and classes, imported by name (`from tests.helpers import deploy`).

Fixtures live in tests/fixtures/ (registered in tests/conftest.py); what a test calls itself lives here: accounts
and their API clients, zips and deployed functions, jobs, waiting, the brokers and the real Celery worker
processes, and a look at what the Docker engine did. Nothing here mocks Docker, the broker or the database.
"""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = REPO_ROOT / ".venv" / "bin"
CELERY = VENV_BIN / "celery" if (VENV_BIN / "celery").exists() else Path(sys.executable).with_name("celery")
MOTO_SERVER = VENV_BIN / "moto_server" if (VENV_BIN / "moto_server").exists() else Path(sys.executable).with_name(
    "moto_server")
MOTO_HOST, MOTO_PORT = "127.0.0.1", int(os.environ.get("TEST_MOTO_PORT", "5055"))
REDIS_TEST_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
WORKER_START_TIMEOUT = 60.0
ENGINE_CALL_SECONDS = 10.0  # a container's create and start on a loaded engine
TERMINAL_STATUSES = ("succeeded", "failed", "timed_out", "cancelled")


# --- users, keys and clients ------------------------------------------------------------------------------------

@dataclass
class Account:
    """A user, one API key of theirs and an API client that sends it."""

    user: Any
    key: str
    client: Any

    @property
    def id(self) -> int:
        return self.user.pk


def make_account(username: str, *, staff: bool = False, superuser: bool = False) -> Account:
    from django.contrib.auth.models import User
    from rest_framework.test import APIClient

    from accounts.services import create_api_key

    user = User.objects.create_user(username=username, email=f"{username}@example.org", is_staff=staff,
                                    is_superuser=superuser)
    _, key = create_api_key(user=user, name=f"{username}'s test key")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return Account(user=user, key=key, client=client)


def as_json(response: Any) -> Any:
    return json.loads(response.content or b"null")


# --- the model catalogue ----------------------------------------------------------------------------------------

# Models that the catalogue says a node serves (the `served_models` fixture). No test that uses them calls a model:
# the node's URL is a port on 127.0.0.1 where nothing listens.
SERVED_MODELS = ("smollm2:135m", "llama3.2:1b", "model-a", "model-b")


# --- code, functions and jobs -----------------------------------------------------------------------------------

def make_zip(files: dict[str, str | bytes], *, links: dict[str, str] | None = None) -> bytes:
    """A zip of `files` (name -> content); `links` adds symbolic-link members (name -> target)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            archive.writestr(info, target)
    return buffer.getvalue()


def deploy(account: Account, code: str, *, name: str | None = None, memory_mb: int | None = None,
           timeout_seconds: int | None = None, env: dict[str, str] | None = None,
           default_model: str | None = None) -> dict[str, Any]:
    """Deploy `code` (the text of main.py) through the API as `account`; returns the function as the API shows it."""
    body: dict[str, Any] = {"name": name or f"fn-{uuid.uuid4().hex[:8]}", "code": code}
    if memory_mb is not None:
        body["memoryMb"] = memory_mb
    if timeout_seconds is not None:
        body["timeoutSeconds"] = timeout_seconds
    if env is not None:
        body["env"] = env
    if default_model is not None:
        body["defaultModel"] = default_model
    response = account.client.post("/api/v1/functions/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def submit(account: Account, function_id: str, input_data: Any = None, *, model_id: str | None = None,
           asynchronous: bool = True) -> Any:
    """POST /run as `account`; the response as it came (202 with a jobId when asynchronous)."""
    body: dict[str, Any] = {"functionId": function_id, "inputData": input_data}
    if model_id is not None:
        body["modelId"] = model_id
    headers = {"HTTP_X_ASYNC": "true"} if asynchronous else {}
    return account.client.post("/run", body, format="json", **headers)


def make_job(account: Account, code: str, input_data: Any = None, *, model_id: str = "smollm2:135m",
             memory_mb: int | None = None, timeout_seconds: int | None = None, env: dict[str, str] | None = None):
    """A queued Job row made through the services (no broker message): for tests that call the runner directly."""
    from jobs import services

    function = services.deploy_function(
        owner=account.user, name=f"fn-{uuid.uuid4().hex[:8]}", code=code.encode(), memory_mb=memory_mb,
        timeout_seconds=timeout_seconds, env=env,
    )
    # Not submit_job: nothing is enqueued, the test hands the job to the runner itself.
    return services.create_job(
        owner=account.user, function=function, function_version=function.current_version, model_id=model_id,
        queue="jobs", input_data=input_data, memory_mb=function.memory_mb, timeout_seconds=function.timeout_seconds,
    )


# --- waiting ----------------------------------------------------------------------------------------------------

def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.1, message: str = "") -> Any:
    """The first truthy value of `predicate()`, asked every `interval` s; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message or predicate}")
        time.sleep(interval)


def pool_ready_timeout(containers: int = 1) -> float:
    """How long a test waits for a warm pool to have `containers` more ready: the pool makes them one after another
    and gives each one's runtime READY_TIMEOUT_SECONDS to reach its FIFO before it counts it as failed, once the
    engine created and started it (ENGINE_CALL_SECONDS). A shorter wait fails a pool that keeps its word."""
    from jobs.sandbox.warm_pool import READY_TIMEOUT_SECONDS

    return containers * (READY_TIMEOUT_SECONDS + ENGINE_CALL_SECONDS)


def wait_for_status(account: Account, job_id: str, *, statuses: tuple[str, ...] = TERMINAL_STATUSES,
                    timeout: float = 60.0) -> dict[str, Any]:
    """The job's /status/ body once its status is one of `statuses`."""
    def done() -> dict[str, Any] | None:
        response = account.client.get(f"/status/{job_id}")
        assert response.status_code == 200, response.content
        body = response.json()
        return body if body["status"] in statuses else None

    return wait_for(done, timeout=timeout, interval=0.2, message=f"job {job_id} to reach {statuses}")


# --- brokers ----------------------------------------------------------------------------------------------------

@dataclass
class Broker:
    """A broker as both sides see it: the test process (settings + Celery app) and a worker (environment)."""

    url: str
    transport_options: dict[str, Any]
    env: dict[str, str]
    var_dir: Path
    kind: str


def filesystem_broker(var_dir: Path) -> Broker:
    """kombu's filesystem transport in `var_dir`/broker: the folders the settings derive from VAR_DIR."""
    folder = var_dir / "broker"
    options = {
        "data_folder_in": str(folder / "out"),
        "data_folder_out": str(folder / "out"),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
        "polling_interval": 0.1,
    }
    for key in ("data_folder_in", "processed_folder", "control_folder"):
        Path(options[key]).mkdir(parents=True, exist_ok=True)
    return Broker(url="filesystem://", transport_options=options, kind="filesystem", var_dir=var_dir,
                  env={"CELERY_BROKER_URL": "filesystem://", "VAR_DIR": str(var_dir)})


def broker_messages(broker: Broker) -> list[dict[str, Any]]:
    """The task messages waiting in a filesystem broker's folder, in the order their names sort (the time each was
    written, to the millisecond)."""
    folder = Path(broker.transport_options["data_folder_out"])
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.msg"))]


def sqs_broker(var_dir: Path, endpoint: tuple[str, int], *, visibility_timeout: int = 600) -> Broker:
    """moto_server's SQS, with a queue-name prefix of its own so no other test run sees its messages."""
    host, port = endpoint
    prefix = f"t{uuid.uuid4().hex[:12]}-"
    url = f"sqs://x:x@{host}:{port}"
    options = {
        "region": "us-east-1",
        "is_secure": False,
        "queue_name_prefix": prefix,
        "wait_time_seconds": 1,
        "polling_interval": 0,
        "visibility_timeout": visibility_timeout,
    }
    env = {
        "CELERY_BROKER_URL": url,
        "VAR_DIR": str(var_dir),
        "AWS_REGION": "us-east-1",
        "SQS_IS_SECURE": "false",
        "SQS_QUEUE_PREFIX": prefix,
        "SQS_WAIT_TIME_SECONDS": "1",
        "SQS_VISIBILITY_TIMEOUT": str(visibility_timeout),
    }
    return Broker(url=url, transport_options=options, env=env, var_dir=var_dir, kind="sqs")


def point_celery_at(app: Any, url: str, transport_options: dict[str, Any]) -> None:
    """Make the test process's Celery app publish to `url`, dropping the connections it pooled for the old one."""
    from kombu import pools

    app.conf.broker_url = url
    app.conf.broker_transport_options = transport_options
    # The app's pools live in kombu's registry, keyed by URL and options: a closed pool left there would be handed
    # out again to the next test that publishes to the same broker (a module's shared worker's).
    pools.reset()
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


def moto_answers(host: str, port: int) -> bool:
    """Whether a moto_server answers on host:port."""
    try:
        with socket.create_connection((host, port), timeout=1):
            pass
        with urllib.request.urlopen(f"http://{host}:{port}/moto-api/", timeout=3):
            return True
    except OSError:
        return False


# --- workers ----------------------------------------------------------------------------------------------------

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
    process: subprocess.Popen | None = None
    _log: Any = field(default=None, repr=False)

    def start(self, *, wait_ready: bool = True) -> "Worker":
        command = [str(CELERY), "-A", "infra_ainode", "worker", "-Q", self.env.get("JOB_QUEUE", "jobs"), "-c", "1",
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


# --- Docker -----------------------------------------------------------------------------------------------------

def job_containers(docker_client: Any, job_id: Any) -> list[Any]:
    """The containers (running or not) that carry job `job_id`'s label."""
    from jobs.sandbox.docker_backend import JOB_LABEL

    return docker_client.containers.list(all=True, filters={"label": f"{JOB_LABEL}={job_id}"}, ignore_removed=True)


def container_creations(docker_client: Any, job_id: Any, since: float) -> int:
    """How many containers the engine created for job `job_id` since `since` (a Unix time): its own event log."""
    from jobs.sandbox.docker_backend import JOB_LABEL

    events = docker_client.events(since=int(since) - 1, until=int(time.time()) + 1, decode=True,
                                  filters={"label": f"{JOB_LABEL}={job_id}", "type": "container", "event": "create"})
    return sum(1 for _ in events)


def remove_containers_of_jobs_in_the_database() -> None:
    """A worker killed (by the test, or after a failure) leaves its job's container behind; never let one outlive
    the test that made its job."""
    from jobs.sandbox.docker_backend import DockerBackend
    from jobs.models import Job

    backend = DockerBackend()
    for job_id in Job.objects.values_list("pk", flat=True):
        backend.remove_job_containers(str(job_id))


# --- warm containers --------------------------------------------------------------------------------------------

def make_warm_pool(root: Path, *, size: int = 0, max_age_seconds: float = 600.0, primed: bool = False) -> Any:
    """A warm pool of real containers under `root`, built as the worker builds its own (not yet started). A primed
    pool makes a container on the spot when none of the job's profile is ready (see `primed_pool_class`)."""
    from jobs.sandbox.docker_backend import DockerBackend
    from jobs.sandbox.spec import make_workdir_folders, warm_spec
    from jobs.sandbox.warm_pool import WarmPool

    cls = primed_pool_class() if primed else WarmPool
    return cls(size=size, root=root, spec_for=warm_spec, layout=make_workdir_folders, backend_factory=DockerBackend,
               max_age_seconds=max_age_seconds)


def primed_pool_class() -> type:
    """For tests only: a WarmPool that, when no container of the job's profile is ready, makes one on the spot, so
    that every job of the test runs on a pooled container. Its `served` holds the containers it handed out."""
    from jobs.sandbox.warm_pool import WarmPool

    class PrimedPool(WarmPool):
        def __init__(self, **kwargs: Any):
            super().__init__(**kwargs)
            self.served: set[str] = set()

        def take(self, profile: Any) -> Any:
            if not self.ready_count(profile):
                self.fill(profile)
            slot = super().take(profile)
            self.served.add(slot.container_id)
            return slot

    return PrimedPool


def pump(source: socket.socket, target: socket.socket) -> None:
    """Copy `source` into `target` until either end closes, then shut both (one direction of a TCP relay)."""
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def run_in_thread(job_id: Any) -> threading.Thread:
    """Run a job with the real runner in a thread of this process (for a test that acts while it runs)."""
    from django.db import connections

    from jobs.runner import run_job

    def target() -> None:
        try:
            run_job(job_id)
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


# --- a real browser ---------------------------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--window-size=1400,2200", "--force-device-scale-factor=1", "--lang=en-US")
BROWSER_WAIT = 20


def text_of(browser: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id).text.strip()
