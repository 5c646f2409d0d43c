"""The `ai_node` pytest fixture: a real AI node (llama.cpp + Ollama front) for the whole test session.

It reuses a node that already answers at AI_NODE_URL (OpenAI API) and AI_NODE_OLLAMA_URL (Ollama API) when
both are set; otherwise it starts `python -m devnode` on free ports and stops it at the end of the session.
tests/conftest.py registers this module as a plugin: a test asks for `ai_node` by name.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# From nothing (model download included) the node was ready in under 10 s here; leave room for a slow mirror.
START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class AINode:
    openai_url: str
    ollama_url: str
    model_id: str


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=2.0) as resp:
        return json.loads(resp.read())


def _node_from_env() -> AINode | None:
    openai_url, ollama_url = os.environ.get("AI_NODE_URL"), os.environ.get("AI_NODE_OLLAMA_URL")
    if not (openai_url and ollama_url):
        return None
    try:
        models = _get_json(openai_url.rstrip("/") + "/v1/models")["data"]
        _get_json(ollama_url.rstrip("/") + "/api/tags")
    except (OSError, ValueError, KeyError):
        return None
    return AINode(openai_url.rstrip("/"), ollama_url.rstrip("/"), models[0]["id"])


def _read_ready_line(proc: subprocess.Popen[str], timeout: float) -> str | None:
    """The `ai-node ready ...` line, or None when the process exits or stays silent too long."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put("")  # end of output: the process is gone

    threading.Thread(target=pump, daemon=True).start()
    try:
        while (line := lines.get(timeout=timeout)) != "":
            if line.startswith("ai-node ready "):
                return line
    except queue.Empty:
        pass
    return None


@pytest.fixture(scope="session")
def ai_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AINode]:
    reused = _node_from_env()
    if reused is not None:
        yield reused
        return
    workdir = tmp_path_factory.mktemp("ai_node")
    log_path = workdir / "ai_node.log"
    with log_path.open("w") as log:
        # Port 0 lets the node pick free ports and tell them in its ready line: no race with other tests.
        proc = subprocess.Popen(
            [sys.executable, "-m", "devnode", "--port", "0", "--ollama-port", "0", "--threads", "1",
             "--pid-file", str(workdir / "ai_node.pid")],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
        )
    try:
        line = _read_ready_line(proc, START_TIMEOUT_S)
        if line is None:
            pytest.fail(f"python -m devnode did not get ready; its log:\n{log_path.read_text()[-4000:]}")
        fields = {key: value for key, _, value in (part.partition("=") for part in line.split()[2:])}
        yield AINode(fields["openai"], fields["ollama"], fields["model"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
