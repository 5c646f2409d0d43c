"""POST /run admission under wrk, served as the application image serves it (gunicorn in the image), on PostgreSQL.

    .venv/bin/python bench/admission.py [--connections 20] [--seconds 20] [--image infra-ainode:local]
                                        [--pg postgres://postgres@127.0.0.1:5432] [--moto 127.0.0.1:5055]

For each broker (the moto SQS server, then Redis as the baseline of the same run: moto's SendMessage slows as a
queue grows) it makes a fresh database, seeds a user, a key, a function and a catalogue entry (no node is asked),
starts the image's web container on 127.0.0.1, and drives `POST /run` with `x-async: true` (admission: a Job row
and a broker message, then 202) from wrk. No worker runs: the queue only grows. It prints figures only, and checks
that every 202 left a job row.
"""
from __future__ import annotations

import argparse
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

LUA = """
wrk.method = "POST"
wrk.body = '{"functionId": "%(function_id)s", "modelId": "bench-model", "inputData": {"n": 1}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
wrk.headers["x-async"] = "true"
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def seed(database_url: str) -> tuple[str, str]:
    """Migrate a fresh database and seed it through the services; returns (api key, function id)."""
    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "infra_ainode.settings"}
    code = (
        "from django.core.management import call_command; call_command('migrate', verbosity=0)\n"
        "from django.contrib.auth.models import User\n"
        "from accounts.services import create_api_key\n"
        "from jobs.services import deploy_function\n"
        "from models_catalog.models import AINode, ModelCatalog\n"
        "node = AINode.objects.create(name='bench-node', kind='openai', url='http://127.0.0.1:9', queue='jobs')\n"
        "ModelCatalog.objects.create(node=node, model_id='bench-model', name='bench-model')\n"
        "user = User.objects.create_user('bench')\n"
        "key = create_api_key(user=user, name='bench')[1]\n"
        "function = deploy_function(owner=user, name='bench', code=b'def handler(e, c):\\n    return 1\\n')\n"
        "print(key, function.pk)\n"
    )
    run = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, check=True)
    key, function_id = run.stdout.split()[-2:]
    return key, function_id


def count_jobs(database_url: str) -> int:
    import psycopg

    with psycopg.connect(database_url.replace("postgres://", "postgresql://")) as connection:
        return connection.execute("SELECT count(*) FROM jobs_job").fetchone()[0]


def measure(args: argparse.Namespace, broker: dict[str, str], label: str) -> None:
    import psycopg

    name = f"ainode_bench_{uuid.uuid4().hex[:8]}"
    admin_url = args.pg.replace("postgres://", "postgresql://") + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    database_url = f"{args.pg}/{name}"
    port = free_port()
    container = f"ainode-bench-{uuid.uuid4().hex[:6]}"
    try:
        key, function_id = seed(database_url)
        env = {"SECRET_KEY": secrets.token_urlsafe(50), "ALLOWED_HOSTS": "127.0.0.1", "SECURE_SSL_REDIRECT": "false",
               "DATABASE_URL": database_url, "WEB_BIND": f"127.0.0.1:{port}", "AI_NODE_URL": "http://127.0.0.1:9",
               **broker}
        if args.workers:
            env["WEB_WORKERS"] = str(args.workers)
        command = ["docker", "run", "--detach", "--name", container, "--network", "host"]
        for key_name, value in env.items():
            command += ["--env", f"{key_name}={value}"]
        subprocess.run([*command, args.image, "web"], check=True, capture_output=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(LUA % {"function_id": function_id, "key": key})
        # A short warm-up (imports, connections, the queue's creation), then the measured run.
        subprocess.run(["wrk", "-t2", "-c4", "-d3s", "-s", script.name, f"http://127.0.0.1:{port}/run"],
                       check=True, capture_output=True)
        before = count_jobs(database_url)
        run = subprocess.run(["wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds}s", "--latency",
                              "-s", script.name, f"http://127.0.0.1:{port}/run"],
                             check=True, capture_output=True, text=True)
        os.unlink(script.name)
        requests = int(re.search(r"(\d+) requests in", run.stdout).group(1))
        non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", run.stdout)
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", run.stdout).group(1))
        p50 = re.search(r"50%\s+(\S+)", run.stdout).group(1)
        p99 = re.search(r"99%\s+(\S+)", run.stdout).group(1)
        made = count_jobs(database_url) - before
        print(f"{label:>10}: {rate:7.1f} admissions/s, p50 {p50}, p99 {p99}, {requests} requests, "
              f"{non_2xx.group(1) if non_2xx else 0} not 202, {made} job rows "
              f"({args.connections} connections, {args.seconds} s)")
    finally:
        subprocess.run(["docker", "rm", "--force", container], capture_output=True)
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=0, help="gunicorn workers (default: the image's, 2 × CPUs + 1)")
    parser.add_argument("--image", default=os.environ.get("APP_IMAGE", "infra-ainode:local"))
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--moto", default="127.0.0.1:5055")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
    sqs = {"CELERY_BROKER_URL": f"sqs://x:x@{args.moto}", "SQS_IS_SECURE": "false", "AWS_REGION": "us-east-1",
           "SQS_QUEUE_PREFIX": f"bench{uuid.uuid4().hex[:8]}-"}
    measure(args, sqs, "SQS (moto)")
    measure(args, {"CELERY_BROKER_URL": args.redis}, "Redis")
    return 0


if __name__ == "__main__":
    sys.exit(main())
