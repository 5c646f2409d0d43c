"""Workers on two GPU hosts of our own: network namespaces `host-a` and `host-b`, each with an AI node and a worker
consuming that node's queue, sharing PostgreSQL (or the SQLite file) and the moto SQS server on the control side.

Each host is an `ip netns` joined to the control side (this test's own namespace) by a veth pair with a /30 of its
own: the node listens on the host's end, where the web (here, the test process) and the host's worker reach it;
the host reaches the control side's database and SQS server through forwarders on the control end, which pass to
127.0.0.1. Nothing is routed anywhere else: traffic stays in these namespaces and on loopback. The namespaces, the
links and the forwarders are made and removed by the test.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.support import REPO_ROOT
from tests.support.brokers import sqs_broker
from tests.support.containers import job_containers, pump
from tests.support.jobs import deploy, submit
from tests.support.waiting import wait_for, wait_for_status
from tests.support.workers import CELERY, database_url

pytestmark = [pytest.mark.timeout(600), pytest.mark.django_db(transaction=True)]

NODE_PORT = 8090
NODE_OLLAMA_PORT = 11435
SUBNET = "10.213"  # 10.213.<host>.0/30: .1 the control end, .2 the host's end


# --- the control side's forwarders ------------------------------------------------------------------------------

class _Pipe(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            upstream = socket.create_connection(self.server.target, timeout=10)
        except OSError:
            return
        upstream.settimeout(None)
        threading.Thread(target=pump, args=(upstream, self.request), daemon=True).start()
        pump(self.request, upstream)


class Forwarder(socketserver.ThreadingTCPServer):
    """Accepts on (address, port) and passes each connection to 127.0.0.1:port."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: str, port: int) -> None:
        super().__init__((address, port), _Pipe)
        self.target = ("127.0.0.1", port)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


# --- hosts --------------------------------------------------------------------------------------------------------

def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Host:
    name: str
    index: int
    netns: str
    model_id: str
    tmp: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def control_address(self) -> str:
        return f"{SUBNET}.{self.index}.1"

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.index}.2"

    @property
    def node_url(self) -> str:
        return f"http://{self.address}:{NODE_PORT}"

    @property
    def worker_id(self) -> str:
        return f"{self.name}-worker"

    def start(self, role: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        """Run `command` inside this host's namespace; its output goes to a log of its own."""
        log = open(self.tmp / f"{self.name}-{role}.log", "wb")
        process = subprocess.Popen(["ip", "netns", "exec", self.netns, *command], cwd=REPO_ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[role] = process
        return process

    def log(self, role: str) -> str:
        path = self.tmp / f"{self.name}-{role}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, role: str, sig: int = signal.SIGTERM) -> None:
        process = self.processes.get(role)
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _make_namespace(host: Host) -> None:
    outside, inside = f"vh{host.netns[-7:]}", f"vn{host.netns[-7:]}"
    ip("netns", "add", host.netns)
    ip("netns", "exec", host.netns, "ip", "link", "set", "lo", "up")
    ip("link", "add", outside, "type", "veth", "peer", "name", inside)
    ip("link", "set", inside, "netns", host.netns)
    ip("addr", "add", f"{host.control_address}/30", "dev", outside)
    ip("link", "set", outside, "up")
    ip("netns", "exec", host.netns, "ip", "addr", "add", f"{host.address}/30", "dev", inside)
    ip("netns", "exec", host.netns, "ip", "link", "set", inside, "up")


def _remove_namespace(host: Host) -> None:
    # Deleting the namespace destroys the veth end inside it, and with it the pair.
    subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, timeout=30)


def _model_dir() -> Path:
    """The node's model file, fetched on the control side (the hosts reach nothing outside)."""
    from devnode.__main__ import ensure_model

    return ensure_model(REPO_ROOT / "var" / "models").parent


def _over(url: str, address: str) -> str:
    """`url` with its host replaced by `address` (the port kept)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    hostport = f"{address}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{hostport}" if len(netloc) == 2 else hostport))


@dataclass
class Platform:
    hosts: dict[str, Host]
    ai_nodes: str
    broker: Any


@pytest.fixture
def platform(request, settings, use_broker, short_tmp: Path, moto_endpoint) -> Iterator[Platform]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("the GPU-hosts test makes network namespaces: it needs root and iproute2")
    tag = uuid.uuid4().hex[:6]
    tmp = Path(tempfile.mkdtemp(prefix="ain-hosts-"))
    first = random.randrange(10, 250, 2)  # two runs at once (two checkouts) must not pick the same links
    hosts = {name: Host(name=name, index=index, netns=f"ain{name[-1]}{tag}", model_id=f"model-{name[-1]}", tmp=tmp)
             for index, name in ((first, "host-a"), (first + 1, "host-b"))}
    ai_nodes = json.dumps([{"name": h.name, "kind": "openai", "url": h.node_url, "queue": h.name}
                           for h in hosts.values()])
    broker = use_broker(sqs_broker(short_tmp / "var", moto_endpoint, visibility_timeout=600))
    settings.AI_NODES = ai_nodes
    db_url = database_url()
    forwarders: list[Forwarder] = []
    model_dir = _model_dir()
    try:
        for host in hosts.values():
            _make_namespace(host)
            forwarders.append(Forwarder(host.control_address, moto_endpoint[1]))
            if db_url.startswith("postgres"):
                forwarders.append(Forwarder(host.control_address, urlsplit(db_url).port or 5432))
        env = {key: value for key, value in os.environ.items() if not key.startswith(("CELERY_", "SQS_", "AI_NODE"))}
        for host in hosts.values():
            host.start("node", [sys.executable, "-m", "devnode", "--host", host.address, "--port", str(NODE_PORT),
                                "--ollama-port", str(NODE_OLLAMA_PORT), "--model-id", host.model_id,
                                "--model-dir", str(model_dir), "--threads", "1", "--parallel", "1",
                                "--pid-file", str(tmp / f"{host.name}-node.pid")], env)
        for host in hosts.values():
            wait_for(lambda: host.processes["node"].poll() is not None or "ai-node ready" in host.log("node"),
                     timeout=180, interval=0.5, message=f"the AI node of {host.name}")
            assert host.processes["node"].poll() is None, host.log("node")
        for host in hosts.values():
            work_root = tmp / f"{host.name[-1]}j"
            work_root.mkdir()
            worker_env = {
                **env, **broker.env,
                "CELERY_BROKER_URL": _over(broker.url, host.control_address),
                "DATABASE_URL": _over(db_url, host.control_address) if db_url.startswith("postgres") else db_url,
                "DJANGO_SETTINGS_MODULE": "infra_ainode.settings", "PYTHONUNBUFFERED": "1",
                "AI_NODES": ai_nodes, "JOB_QUEUE": host.name, "WORKER_ID": host.worker_id,
                "JOB_WORK_ROOT": str(work_root), "JOB_RUNTIME_IMAGE": settings.JOB_RUNTIME_IMAGE, "REDIS_URL": "",
            }
            host.start("worker", [str(CELERY), "-A", "infra_ainode", "worker", "-Q", host.name, "-c", "1", "-P",
                                  "solo", "--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "info",
                                  "-n", f"{host.worker_id}@%h"], worker_env)
        for host in hosts.values():
            wait_for(lambda: host.processes["worker"].poll() is not None or " ready." in host.log("worker"),
                     timeout=60, interval=0.2, message=f"the worker of {host.name}")
            assert host.processes["worker"].poll() is None, host.log("worker")
        yield Platform(hosts=hosts, ai_nodes=ai_nodes, broker=broker)
    finally:
        failed = any(getattr(getattr(request.node, f"report_{when}", None), "failed", False)
                     for when in ("setup", "call"))
        for host in hosts.values():
            for role in ("worker", "node"):
                host.stop(role)
                if failed:
                    print(f"\n===== {host.name} {role} =====\n{host.log(role)[-5000:]}")
        for forwarder in forwarders:
            forwarder.close()
        for host in hosts.values():
            _remove_namespace(host)
        from jobs.sandbox.docker_backend import DockerBackend
        from jobs.models import Job

        for job_id in Job.objects.values_list("pk", flat=True):
            DockerBackend().remove_job_containers(str(job_id))
        shutil.rmtree(tmp, ignore_errors=True)


ASK = '''
import ai_client

def handler(event, context):
    return {"text": ai_client.generate("Say hi.", temperature=0, seed=42, max_tokens=8)}
'''
ASK_THEN_WAIT = '''
import time
import ai_client

def handler(event, context):
    ai_client.generate("Say hi.", temperature=0, seed=42, max_tokens=4)
    print("asked", flush=True)
    time.sleep(600)
'''


def models_by_id(client) -> tuple[dict[str, dict], str]:
    response = client.get("/models")
    assert response.status_code == 200, response.content
    body = response.json()
    return {model["id"]: model for model in body["models"]}, body.get("warning", "")


def test_each_host_runs_its_own_models_jobs_and_a_dead_worker_costs_only_its_own_job(
        platform: Platform, alice, settings, docker_client):
    from jobs.models import Job, LLMCall
    from jobs.sandbox.recovery import recover_lost_jobs

    a, b = platform.hosts["host-a"], platform.hosts["host-b"]
    models, warning = models_by_id(alice.client)
    assert {"model-a", "model-b"} <= set(models) and warning == ""
    assert (models["model-a"]["node"], models["model-b"]["node"]) == ("host-a", "host-b")
    assert models["model-a"]["status"] == models["model-b"]["status"] == "available"

    # A model only host B serves runs on host B, metered from host B's node.
    asker = deploy(alice, ASK)
    on_b = submit(alice, asker["functionId"], model_id="model-b").json()["jobId"]
    result = wait_for_status(alice, on_b, timeout=120)
    assert result["status"] == "succeeded", result
    assert (result["node"], result["workerId"], result["modelId"]) == ("host-b", b.worker_id, "model-b")
    assert result["llmCalls"] == 1 and result["promptTokens"] > 0 and result["completionTokens"] > 0
    assert Job.objects.get(pk=on_b).queue == "host-b"

    # Host A's worker dies in the middle of a job; host B's job of the same moment is untouched.
    waiter = deploy(alice, ASK_THEN_WAIT, timeout_seconds=5)
    doomed = submit(alice, waiter["functionId"], model_id="model-a").json()["jobId"]
    wait_for(lambda: LLMCall.objects.filter(job_id=doomed).exists() and job_containers(docker_client, doomed),
             timeout=120, message="host A's job to call its model")
    survivor = submit(alice, asker["functionId"], model_id="model-b").json()["jobId"]
    a.stop("worker", signal.SIGKILL)
    result = wait_for_status(alice, survivor, timeout=120)
    assert result["status"] == "succeeded" and result["workerId"] == b.worker_id, result
    assert Job.objects.get(pk=doomed).status == "running"  # nobody runs it any more, nobody has noticed yet

    settings.JOB_LOST_GRACE_SECONDS = 1
    job = Job.objects.get(pk=doomed)
    time.sleep(max(0.0, (job.started_at.timestamp() + job.timeout_seconds + 1.5) - time.time()))
    assert recover_lost_jobs() == 1  # what beat runs every minute
    lost = alice.client.get(f"/status/{doomed}").json()
    assert (lost["status"], lost["errorCode"], lost["workerId"]) == ("failed", "worker_lost", a.worker_id)
    assert lost["llmCalls"] == 1  # the call it made before its worker died stays on the bill
    assert job_containers(docker_client, doomed) == []
    assert alice.client.get(f"/status/{survivor}").json()["status"] == "succeeded"

    # Host B's node goes down: /models says so and keeps host A's model available; routing to it is refused.
    b.stop("node")
    models, warning = models_by_id(alice.client)
    assert models["model-b"]["status"] == "unavailable" and models["model-a"]["status"] == "available"
    assert "host-b" in warning and "host-a" not in warning
    refused = submit(alice, asker["functionId"], model_id="model-b")
    assert refused.status_code == 400 and refused.json()["code"] == "unknown_model"
