"""Brokers as both sides see them: kombu's filesystem transport and moto_server's SQS, with what a worker's
environment needs for each; pointing the test process's Celery app at one; whether a moto_server answers."""
from __future__ import annotations

import json
import os
import socket
import sys
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import VENV_BIN

MOTO_SERVER = VENV_BIN / "moto_server" if (VENV_BIN / "moto_server").exists() else Path(sys.executable).with_name(
    "moto_server")
MOTO_HOST, MOTO_PORT = "127.0.0.1", int(os.environ.get("TEST_MOTO_PORT", "5055"))
REDIS_TEST_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


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
