"""Fixtures of the command-line client's tests: the live API (pytest-django's live server on the test database),
a real Celery worker with the real model where a job must run, and `ainode` itself, run as a user would."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support import REPO_ROOT, VENV_BIN

AINODE = VENV_BIN / "ainode"


@dataclass
class Api:
    url: str
    key: str
    account: Any


@pytest.fixture
def api(live_server, transactional_db, alice) -> Api:
    return Api(url=live_server.url, key=alice.key, account=alice)


@pytest.fixture
def ainode(api: Api) -> Callable[..., subprocess.CompletedProcess]:
    """Run `ainode ARGS...` (the installed entry point, else `python -m ainode_cli`) against the live API."""

    def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        command = [str(AINODE)] if AINODE.exists() else [sys.executable, "-m", "ainode_cli"]
        # PYTHONPATH: this checkout's ainode_cli, whichever checkout the shared .venv's entry point was installed from.
        environment = {**os.environ, "AINODE_URL": api.url, "AINODE_API_KEY": api.key, "PYTHONPATH": str(REPO_ROOT),
                       **(env or {})}
        return subprocess.run([*command, *args], input=stdin, capture_output=True, text=True, cwd=REPO_ROOT,
                              env=environment, timeout=timeout)

    return run


@pytest.fixture
def real_models(transactional_db, settings) -> list[str]:
    """The catalogue learns the real local AI node's models (scripts/ai-node.sh, 127.0.0.1:8090)."""
    from models_catalog.services import sync_catalogue

    answer = sync_catalogue(timeout_ms=10_000)
    available = [model.id for model in answer.models if model.status == "available"]
    assert settings.DEFAULT_MODEL_ID in available, (
        f"the local AI node does not serve {settings.DEFAULT_MODEL_ID}: start it with scripts/ai-node.sh start")
    return available
