"""Fixtures shared by the whole suite: users and their API clients, deploying functions, the broker the test
process publishes to, real Celery workers in subprocesses, and a look at the real Docker engine.

Nothing here mocks Docker, the broker or the database. A worker is a real `celery worker` process that opens the
test database (so end-to-end tests use `transactional_db`: the worker must see committed rows) and listens on
the same broker as the test process.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from jobs import warm_pool as warm_pools
from jobs.warm_pool import WarmPool

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = REPO_ROOT / ".venv" / "bin"
CELERY = VENV_BIN / "celery" if (VENV_BIN / "celery").exists() else Path(sys.executable).with_name("celery")
MOTO_SERVER = VENV_BIN / "moto_server" if (VENV_BIN / "moto_server").exists() else Path(sys.executable).with_name(
    "moto_server")
MOTO_HOST, MOTO_PORT = "127.0.0.1", int(os.environ.get("TEST_MOTO_PORT", "5055"))
REDIS_TEST_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
WORKER_START_TIMEOUT = 60.0


# --- reporting --------------------------------------------------------------------------------------------------

@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    # Keep each phase's report on the item, so fixtures can tell at teardown whether the test failed.
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(getattr(request.node, f"report_{when}", None), "failed", False) for when in ("setup", "call"))


# --- the test database ------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix) -> None:
    """The SQLite test database is a file under VAR_DIR (so a worker process can open it); on a fresh clone that
    folder does not exist yet."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    test_name = (database.get("TEST") or {}).get("NAME")
    if database["ENGINE"].endswith("sqlite3") and test_name:
        Path(test_name).parent.mkdir(parents=True, exist_ok=True)


# --- users, keys and clients ------------------------------------------------------------------------------------

@dataclass
class Account:
    user: Any
    key: str
    client: Any

    @property
    def id(self) -> int:
        return self.user.pk


def _account(username: str, *, staff: bool = False, superuser: bool = False) -> Account:
    from django.contrib.auth.models import User
    from rest_framework.test import APIClient

    from accounts.services import create_api_key

    user = User.objects.create_user(username=username, email=f"{username}@example.org", is_staff=staff,
                                    is_superuser=superuser)
    _, key = create_api_key(user=user, name=f"{username}'s test key")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return Account(user=user, key=key, client=client)


@pytest.fixture
def alice(db) -> Account:
    return _account("alice")


@pytest.fixture
def bob(db) -> Account:
    return _account("bob")


@pytest.fixture
def charlie(db) -> Account:
    return _account("charlie")


@pytest.fixture
def operator(db) -> Account:
    """The platform's operator: staff with every admin permission (a bare is_staff user may open no admin page)."""
    return _account("operator", staff=True, superuser=True)


@pytest.fixture
def anonymous() -> Any:
    from rest_framework.test import APIClient

    return APIClient()


# --- the model catalogue ----------------------------------------------------------------------------------------

# Models that the catalogue says a node serves. No test that uses them calls a model: the node's URL is a port on
# 127.0.0.1 where nothing listens.
SERVED_MODELS = ("smollm2:135m", "llama3.2:1b", "model-a", "model-b")


@pytest.fixture
def served_models(db) -> tuple[str, ...]:
    """A node serving SERVED_MODELS: submitting or running a job routes its model through the catalogue, which
    answers 400 unknown_model for a model no node serves."""
    from models_catalog.models import AINode, ModelCatalog

    node = AINode.objects.create(name="test-node", kind="openai", url="http://127.0.0.1:9", queue="jobs")
    for model_id in SERVED_MODELS:
        ModelCatalog.objects.create(node=node, model_id=model_id, name=model_id)
    return SERVED_MODELS


# --- code and functions -----------------------------------------------------------------------------------------

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


@pytest.fixture
def deploy_function() -> Callable[..., dict[str, Any]]:
    return deploy


def submit(account: Account, function_id: str, input_data: Any = None, *, model_id: str | None = None,
           asynchronous: bool = True) -> Any:
    body: dict[str, Any] = {"functionId": function_id, "inputData": input_data}
    if model_id is not None:
        body["modelId"] = model_id
    headers = {"HTTP_X_ASYNC": "true"} if asynchronous else {}
    return account.client.post("/run", body, format="json", **headers)


def make_job(account: Account, code: str, input_data: Any = None, *, model_id: str = "smollm2:135m",
             memory_mb: int | None = None, timeout_seconds: int | None = None, env: dict[str, str] | None = None):
    """A queued Job row made through the services (no broker message): for tests that call the runner directly."""
    from jobs import services
    from jobs.models import Job

    function = services.deploy_function(
        owner=account.user, name=f"fn-{uuid.uuid4().hex[:8]}", code=code.encode(), memory_mb=memory_mb,
        timeout_seconds=timeout_seconds, env=env,
    )
    # Not submit_job: nothing is enqueued, the test hands the job to the runner itself.
    return Job.objects.create(
        owner=account.user, function=function, function_version=function.current_version, model_id=model_id,
        queue="jobs", input_data=input_data, memory_mb=function.memory_mb, timeout_seconds=function.timeout_seconds,
    )


def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.1, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message or predicate}")
        time.sleep(interval)


def wait_for_status(account: Account, job_id: str, *, statuses=("succeeded", "failed", "timed_out", "cancelled"),
                    timeout: float = 60.0) -> dict[str, Any]:
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


def _reset_celery_connections(app: Any) -> None:
    if app._pool is not None:
        app._pool.force_close_all()
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


@pytest.fixture
def use_broker(settings) -> Callable[[Broker], Broker]:
    """Point the test process's settings and its Celery app at `broker`; restored after the test."""
    from infra_ainode.celery import app

    saved = (app.conf.broker_url, app.conf.broker_transport_options)

    def use(broker: Broker) -> Broker:
        settings.CELERY_BROKER_URL = broker.url
        settings.CELERY_BROKER_TRANSPORT_OPTIONS = broker.transport_options
        app.conf.broker_url = broker.url
        app.conf.broker_transport_options = broker.transport_options
        _reset_celery_connections(app)
        return broker

    yield use
    app.conf.broker_url, app.conf.broker_transport_options = saved
    _reset_celery_connections(app)


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


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            pass
        with urllib.request.urlopen(f"http://{host}:{port}/moto-api/", timeout=3):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A moto_server on 127.0.0.1: the one already running on TEST_MOTO_PORT (5055), else one started here."""
    if _answers(MOTO_HOST, MOTO_PORT):
        yield MOTO_HOST, MOTO_PORT
        return
    with socket.socket() as probe:
        probe.bind((MOTO_HOST, 0))
        port = probe.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(MOTO_SERVER), "-H", MOTO_HOST, "-p", str(port)], stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: process.poll() is not None or _answers(MOTO_HOST, port), timeout=30,
                 message="moto_server to answer")
        assert process.poll() is None, log.read_text()
        yield MOTO_HOST, port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A folder with a short path. A job's gateway socket lives under its work folder, and a Unix socket's path
    may not be longer than 107 bytes, which pytest's own tmp_path (named after the test) easily passes."""
    folder = Path(tempfile.mkdtemp(prefix="ain-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolated_broker(short_tmp: Path, use_broker) -> Broker:
    """Every test publishes to a filesystem broker folder of its own, never to the repository's var/broker."""
    return use_broker(filesystem_broker(short_tmp / "var"))


@pytest.fixture(params=["filesystem", "sqs"])
def broker(request: pytest.FixtureRequest, short_tmp: Path, use_broker) -> Broker:
    """Each end-to-end test runs once over kombu's filesystem transport and once over SQS (moto_server)."""
    if request.param == "filesystem":
        return use_broker(filesystem_broker(short_tmp / "var"))
    return use_broker(sqs_broker(short_tmp / "var", request.getfixturevalue("moto_endpoint")))


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

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the worker dies at once, as on a crash; it cannot tidy anything up."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (Celery's warm shutdown: the current task finishes), then SIGKILL if it takes too long."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGKILL)
                self.process.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None


@pytest.fixture
def worker(request: pytest.FixtureRequest, transactional_db, settings,
           tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """A factory of real Celery workers on the test database and the given broker; all stopped at the end.

    `worker(broker, REDIS_URL=..., ...)`: extra keyword arguments become the worker's environment variables.
    """
    started: list[Worker] = []

    def start(broker: Broker, *, wait_ready: bool = True, **extra_env: Any) -> Worker:
        worker_id = f"test-worker-{len(started) + 1}-{uuid.uuid4().hex[:6]}"
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
        process = Worker(worker_id=worker_id, log_path=tmp_path / f"{worker_id}.log", env=env)
        started.append(process)
        return process.start(wait_ready=wait_ready)

    yield start
    for process in started:
        process.stop()
    _remove_containers_of_this_tests_jobs()
    if _failed(request):
        for process in started:
            print(f"\n===== log of {process.worker_id} =====\n{process.log()}")


def _remove_containers_of_this_tests_jobs() -> None:
    """A worker killed (by the test, or after a failure) leaves its job's container behind; never let one outlive
    the test."""
    from jobs.docker_backend import DockerBackend
    from jobs.models import Job

    backend = DockerBackend()
    for job_id in Job.objects.values_list("pk", flat=True):
        backend.remove_job_containers(str(job_id))


# --- Docker -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def docker_client():
    """The real Docker engine, for looking at what the runner did (it is never driven from here)."""
    import docker

    client = docker.from_env(timeout=30)
    client.ping()
    return client


def job_containers(docker_client: Any, job_id: Any) -> list[Any]:
    from jobs.docker_backend import JOB_LABEL

    return docker_client.containers.list(all=True, filters={"label": f"{JOB_LABEL}={job_id}"}, ignore_removed=True)


def container_creations(docker_client: Any, job_id: Any, since: float) -> int:
    """How many containers the engine created for job `job_id` since `since` (a Unix time): its own event log."""
    from jobs.docker_backend import JOB_LABEL

    events = docker_client.events(since=int(since) - 1, until=int(time.time()) + 1, decode=True,
                                  filters={"label": f"{JOB_LABEL}={job_id}", "type": "container", "event": "create"})
    return sum(1 for _ in events)


@pytest.fixture
def job_work_root(settings, short_tmp: Path) -> Path:
    """Jobs run in-process keep their work folders under this test's own folder."""
    settings.JOB_WORK_ROOT = short_tmp / "jobs"
    settings.JOB_WORK_ROOT.mkdir()
    return settings.JOB_WORK_ROOT


@pytest.fixture
def redis_results(db, settings) -> Iterator[Any]:
    """Results also go to Redis (database 15); the keys of this test's jobs are deleted afterwards."""
    import redis

    from jobs.models import Job

    settings.REDIS_URL = REDIS_TEST_URL
    client = redis.Redis.from_url(REDIS_TEST_URL)
    client.ping()
    yield client
    for pk in Job.objects.values_list("pk", flat=True):
        client.delete(f"result:{pk}")
    client.close()


def as_json(response: Any) -> Any:
    return json.loads(response.content or b"null")


# --- warm containers --------------------------------------------------------------------------------------------

class PrimedPool(WarmPool):
    """For tests only: when no container of the job's profile is ready, one is made on the spot, so that every job of
    the test runs on a pooled container. `served` holds the containers it handed out."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.served: set[str] = set()

    def take(self, profile: Any) -> Any:
        if not self.ready_count(profile):
            self.fill(profile)
        slot = super().take(profile)
        self.served.add(slot.container_id)
        return slot


def make_warm_pool(root: Path, *, size: int = 0, max_age_seconds: float = 600.0, primed: bool = False) -> WarmPool:
    """A warm pool of real containers under `root`, built as the worker builds its own (not yet started)."""
    from jobs.docker_backend import DockerBackend
    from jobs.runner import make_workdir_folders, warm_spec

    cls = PrimedPool if primed else WarmPool
    return cls(size=size, root=root, spec_for=warm_spec, layout=make_workdir_folders, backend_factory=DockerBackend,
               max_age_seconds=max_age_seconds)


@pytest.fixture
def warm_pool(job_work_root: Path) -> Iterator[WarmPool]:
    """A started warm pool of size 0 installed as this process's pool: tests fill it with `pool.fill(profile)`."""
    pool = make_warm_pool(job_work_root).start()
    previous = warm_pools.install(pool)
    yield pool
    warm_pools.install(previous)
    pool.stop()


@pytest.fixture(params=["cold", "warm"])
def execution(request: pytest.FixtureRequest, job_work_root: Path) -> Iterator[str]:
    """Each test runs once on cold containers and once on pooled (warm) ones; with the pool on, every job that got a
    container must have run on one the pool handed out."""
    if request.param == "cold":
        yield "cold"
        return
    from jobs.models import Job

    # The database must outlive this fixture, which reads it at teardown.
    request.getfixturevalue("transactional_db" if "transactional_db" in request.fixturenames else "db")

    pool = make_warm_pool(job_work_root, primed=True).start()
    previous = warm_pools.install(pool)
    try:
        yield "warm"
        ran_on = set(Job.objects.exclude(container_id="").values_list("container_id", flat=True))
        assert ran_on, "no job got a container"
        assert ran_on <= pool.served, "a job ran on a cold container while the pool was on"
    finally:
        warm_pools.install(previous)
        pool.stop()
