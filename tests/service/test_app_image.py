"""The application image, started here as web, worker and beat against this machine's PostgreSQL, Redis, the moto
SQS server and the real AI node, runs the demo job to a metered result.

The containers share the host's network namespace (everything listens on 127.0.0.1); the worker drives the host's
Docker engine through the mounted socket, and the job work root has the same path inside and out, since the
engine resolves the job container's bind mounts on the host.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures.ai_node import AINode
from tests.service.ops_helpers import PRODUCTION_ENV, parse_metrics, total
from tests.support import REPO_ROOT
from tests.support.ports import free_port
from tests.support.waiting import wait_for

APP_IMAGE = os.environ.get("APP_IMAGE", "infra-ainode:local")
RUNTIME_IMAGE = os.environ.get("JOB_RUNTIME_IMAGE", "infra-ainode-runtime:bookworm-2")
PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
DOCKER_SOCKET = "/var/run/docker.sock"

pytestmark = pytest.mark.timeout(600)


def docker(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    run = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and run.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} failed: {run.stderr}{run.stdout}")
    return run


def http(method: str, url: str, body: dict | None = None, **headers: str) -> tuple[int, dict | str]:
    request = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A database of its own on this machine's PostgreSQL, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_ADMIN_URL.replace("postgres://", "postgresql://"), autocommit=True,
                                connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL does not answer at {PG_ADMIN_URL} (scripts/services.sh postgres): {exc}")
    name = f"ainode_image_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@dataclass
class Deployment:
    """The image's containers and the environment they share."""

    env: dict[str, str]
    work_root: Path
    web_url: str
    names: list[str] = field(default_factory=list)

    def run(self, *command: str, detach: bool = False, name: str = "", extra: tuple[str, ...] = ()) -> str:
        args = ["run", "--network", "host"]
        args += ["--detach", "--name", name] if detach else ["--rm"]
        for key, value in self.env.items():
            args += ["--env", f"{key}={value}"]
        out = docker(*args, *extra, APP_IMAGE, *command).stdout.strip()
        if detach:
            self.names.append(name)
        return out

    def logs(self, name: str) -> str:
        run = docker("logs", name, check=False)
        return run.stdout + run.stderr


@pytest.fixture
def deployment(postgres_database: str, moto_endpoint, ai_node: AINode, request) -> Iterator[Deployment]:
    if docker("image", "inspect", APP_IMAGE, check=False).returncode != 0:
        pytest.fail(f"no image {APP_IMAGE}: build it with scripts/build-app-image.sh")
    # Short: a job's gateway socket path under it must stay within the Unix limit.
    work_root = Path(tempfile.mkdtemp(prefix="ain-img-")) / "jobs"
    work_root.mkdir()
    os.chown(work_root, 10002, 10002)  # the image's service user writes the job folders
    web_port = free_port()
    env = {
        "SECRET_KEY": secrets.token_urlsafe(50),
        "RECEIPT_SIGNING_KEY": PRODUCTION_ENV["RECEIPT_SIGNING_KEY"],
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "false",  # plain HTTP on loopback here; a TLS proxy stands in front in production
        "DATABASE_URL": postgres_database,
        "CELERY_BROKER_URL": f"sqs://x:x@{moto_endpoint[0]}:{moto_endpoint[1]}",
        "SQS_IS_SECURE": "false",
        "SQS_QUEUE_PREFIX": f"img{uuid.uuid4().hex[:10]}-",
        "AWS_REGION": "us-east-1",
        "REDIS_URL": "redis://127.0.0.1:6379/14",
        "AI_NODE_URL": ai_node.openai_url,
        "AI_NODE_KIND": "openai",
        "JOB_WORK_ROOT": str(work_root),
        "JOB_RUNTIME_IMAGE": RUNTIME_IMAGE,
        "METRICS_TOKEN": "image-test-scrape-token",
        "WEB_BIND": f"127.0.0.1:{web_port}",
        "WEB_WORKERS": "2",
        "WORKER_CONCURRENCY": "1",
        "WORKER_HEARTBEAT_FILE": "/tmp/worker-alive",
        "LOG_FORMAT": "json",
        "MODEL_SYNC_INTERVAL": "5",  # so that beat has something to send within the test
    }
    deployment = Deployment(env=env, work_root=work_root, web_url=f"http://127.0.0.1:{web_port}")
    try:
        yield deployment
    finally:
        failed = any(getattr(getattr(request.node, f"report_{when}", None), "failed", False)
                     for when in ("setup", "call"))
        for name in deployment.names:
            if failed:
                print(f"\n===== docker logs {name} =====\n{deployment.logs(name)[-6000:]}")
            docker("rm", "--force", name, check=False)
        shutil.rmtree(work_root.parent, ignore_errors=True)


def test_the_image_runs_web_worker_and_beat_to_a_metered_demo_result(deployment: Deployment):
    suffix = uuid.uuid4().hex[:6]
    deployment.run("migrate")
    key = deployment.run("manage", "create_api_key", "demo", "--name", "image test")
    socket_group = str(os.stat(DOCKER_SOCKET).st_gid)
    deployment.run("web", detach=True, name=f"ainode-web-{suffix}")
    worker_metrics_port = free_port()
    deployment.run("worker", detach=True, name=f"ainode-worker-{suffix}",
                   extra=("--env", f"WORKER_ID=image-worker-{suffix}", "--group-add", socket_group,
                          "--env", f"WORKER_METRICS_PORT={worker_metrics_port}",
                          "--volume", f"{DOCKER_SOCKET}:{DOCKER_SOCKET}",
                          "--volume", f"{deployment.work_root}:{deployment.work_root}"))
    deployment.run("beat", detach=True, name=f"ainode-beat-{suffix}")
    web = deployment.web_url

    def ready() -> dict | None:
        try:
            # The checks' details are the operator's: they come with the scrape token.
            status, body = http("GET", web + "/readyz", Authorization="Bearer image-test-scrape-token")
        except OSError:
            return None
        return body if status == 200 else None

    body = wait_for(ready, timeout=90, interval=1, message="the web container to be ready")
    assert set(body["checks"]) == {"database", "broker", "redis", "ai_nodes"}
    assert body["checks"]["database"]["vendor"] == "postgresql" and body["checks"]["broker"]["transport"] == "sqs"

    auth = {"Authorization": f"Bearer {key}"}
    code = (REPO_ROOT / "examples" / "hello_llm" / "main.py").read_text()
    status, function = http("POST", web + "/api/v1/functions/", {"name": "hello-llm", "code": code,
                                                                  "timeoutSeconds": 120}, **auth)
    assert status == 201, function
    status, job = http("POST", web + "/run", {"functionId": function["functionId"], "inputData": {"topic": "tea"}},
                       **auth)
    assert status in (200, 202), job
    deadline = time.monotonic() + 180
    while job.get("status") in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(1)
        status, job = http("GET", f"{web}/status/{job['jobId']}", **auth)
    assert job["status"] == "succeeded", job
    assert job["workerId"] == f"image-worker-{suffix}"
    assert job["llmCalls"] == 2 and job["promptTokens"] > 0 and job["completionTokens"] > 0
    assert job["llm_token_count"] == job["promptTokens"] + job["completionTokens"]
    assert job["result"]["usage"]["llmCalls"] == 2

    # The web's metrics count the submission; the scrape needs the token.
    assert http("GET", web + "/metrics")[0] == 403
    request = urllib.request.Request(web + "/metrics", headers={"Authorization": "Bearer image-test-scrape-token"})
    with urllib.request.urlopen(request, timeout=10) as response:
        samples = parse_metrics(response.read().decode())
    assert total(samples, "ainode_jobs_submitted_total") == 1
    # The worker's metrics: recorded in its pool process, summed and served by its main process.
    worker_scrape = urllib.request.Request(f"http://127.0.0.1:{worker_metrics_port}/metrics",
                                           headers={"Authorization": "Bearer image-test-scrape-token"})
    with urllib.request.urlopen(worker_scrape, timeout=10) as response:
        samples = parse_metrics(response.read().decode())
    assert total(samples, "ainode_jobs_finished_total", status="succeeded") == 1
    assert total(samples, "ainode_model_calls_total", outcome="ok") == 2
    assert total(samples, "ainode_tokens_total", kind="prompt") == job["promptTokens"]
    assert total(samples, "ainode_tokens_total", kind="completion") == job["completionTokens"]
    assert total(samples, "ainode_jobs_running") == 0

    # Beat handed its periodic tasks to the worker, and the worker keeps its liveness file fresh.
    wait_for(lambda: "Sending due task sync-models" in deployment.logs(f"ainode-beat-{suffix}"), timeout=30,
             message="beat to send the catalogue sync")
    wait_for(lambda: "models_catalog.sync_models" in deployment.logs(f"ainode-worker-{suffix}"), timeout=30,
             message="the worker to run the catalogue sync")
    age = docker("exec", f"ainode-worker-{suffix}", "sh", "-c",
                 'echo $(( $(date +%s) - $(stat -c %Y "$WORKER_HEARTBEAT_FILE") ))').stdout.strip()
    assert 0 <= int(age) < 30
    # Logs are JSON lines, as LOG_FORMAT=json asks.
    worker_lines = [line for line in deployment.logs(f"ainode-worker-{suffix}").splitlines() if line.startswith("{")]
    assert any(json.loads(line)["message"].startswith(f"job {job['jobId']}: claimed") for line in worker_lines)
    # Nothing of the job is left in the shared work root.
    assert list(deployment.work_root.iterdir()) == []


@pytest.fixture
def app_image() -> str:
    if docker("image", "inspect", APP_IMAGE, check=False).returncode != 0:
        pytest.fail(f"no image {APP_IMAGE}: build it with scripts/build-app-image.sh")
    return APP_IMAGE


def test_the_image_refuses_to_start_without_a_secret_key(app_image):
    run = docker("run", "--rm", "--network", "none", app_image, "manage", "check", check=False)
    assert run.returncode != 0
    assert "ENVIRONMENT=production needs a real SECRET_KEY" in run.stderr


def test_the_image_passes_check_deploy_with_the_documented_environment(app_image):
    env = [arg for key, value in PRODUCTION_ENV.items() for arg in ("--env", f"{key}={value}")]
    run = docker("run", "--rm", "--network", "none", *env, app_image, "manage", "check", "--deploy",
                 "--fail-level", "WARNING", check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no issues" in run.stdout


def test_the_image_runs_as_its_service_user_with_python_3_11(app_image):
    run = docker("run", "--rm", "--network", "none", app_image, "sh", "-c",
                 "id -u; python -c 'import sys; print(sys.version_info[:2])'")
    assert run.stdout.split("\n")[:2] == ["10002", "(3, 11)"]
