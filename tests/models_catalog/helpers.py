"""Nodes for catalogue tests, all on 127.0.0.1: the real AI node (OpenAI and Ollama forms), the real node seen
through a relay that a test can stop mid-way, a node that accepts and never answers, a port nothing listens on,
and a scripted HTTP server that answers whatever a test tells it to (garbage, HTTP 500, a changing list).

The fixtures that hand them to tests are in conftest.py; tests import these helpers by name.
"""
from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.helpers import pump

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


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (it was free a moment ago: good enough for a refusal)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Listener:
    """A listening socket served by a daemon thread; `close()` stops it and drops every connection."""

    def __init__(self, handle: Callable[[socket.socket], None], port: int = 0) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self.accepted = 0  # connections accepted so far
        self._handle = handle
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            self.accepted += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        # A thread blocked in accept() keeps a closed socket listening; shutting it down first wakes it.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.drop_connections()

    def drop_connections(self) -> None:
        """Close every connection open now; new ones are still accepted unless closed."""
        connections, self.connections = self.connections, []
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


class Relay:
    """A TCP relay to a real node: the node as seen on another port, which `stop()` takes down mid-test. A relay
    started on the `port` of a stopped one is that node coming back."""

    def __init__(self, upstream_url: str, port: int = 0) -> None:
        host, upstream_port = upstream_url.removeprefix("http://").rstrip("/").split(":")
        self._upstream = (host, int(upstream_port))
        self._listener = Listener(self._relay, port)
        self.url = self._listener.url

    def _relay(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._upstream, timeout=10)
        except OSError:
            conn.close()
            return
        upstream.settimeout(None)
        self._listener.connections.append(upstream)
        threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()
        pump(conn, upstream)

    @property
    def accepted(self) -> int:
        """Connections made to the node through the relay."""
        return self._listener.accepted

    def drop_connections(self) -> None:
        """Close the connections open now, as a node closes the idle ones it keeps alive; the relay stays up."""
        self._listener.drop_connections()

    def stop(self) -> None:
        self._listener.close()


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
