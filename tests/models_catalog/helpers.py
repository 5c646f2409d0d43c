"""Nodes for catalogue tests, all on 127.0.0.1: the real AI node (OpenAI and Ollama forms), the real node seen
through a relay that a test can stop mid-way (Listener and Relay are in tests/support/nodes.py), a node that accepts
and never answers, a port nothing listens on, and a scripted HTTP server that answers whatever a test tells it to
(garbage, HTTP 500, a changing list).

The fixtures that hand them to tests are in conftest.py; tests import these helpers by name.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "smollm2:135m"


@dataclass(frozen=True)
class Node:
    """One entry of AI_NODES."""

    name: str
    kind: str
    url: str
    queue: str = "jobs"

    def as_setting(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind, "url": self.url, "queue": self.queue}


@dataclass
class ScriptedNode:
    """An HTTP server whose answers the test sets: `routes[path] = (status, body)`; body bytes or JSON-able."""

    url: str = ""
    routes: dict[str, tuple[int, Any]] = field(default_factory=dict)
    server: ThreadingHTTPServer | None = None

    def openai_models(self, *ids: str) -> None:
        self.routes["/v1/models"] = (200, {"object": "list", "data": [
            {"id": model_id, "object": "model", "owned_by": "test"} for model_id in ids]})

    def ollama_models(self, *ids: str) -> None:
        self.routes["/api/tags"] = (200, {"models": [
            {"name": model_id, "model": model_id, "size": 1000,
             "details": {"family": "llama", "parameter_size": "1B", "quantization_level": "Q4_0"}}
            for model_id in ids]})
        self.routes["/api/ps"] = (200, {"models": []})

    def start(self) -> "ScriptedNode":
        node = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                status, body = node.routes.get(self.path, (404, {"error": "not found"}))
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def models_of(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.content
    return response.json()["models"]


def by_node(response: Any) -> dict[str, dict[str, Any]]:
    """The models of a /models answer keyed by "id@node"."""
    return {f"{m['id']}@{m['node']}": m for m in models_of(response)}
