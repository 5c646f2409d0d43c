"""The CLI's key stays with the API's host: a redirect to another host is followed without the Authorization
header (urllib's own handler would send it along); one on the same host keeps it."""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ainode_cli.client import Client


class _Recorder(BaseHTTPRequestHandler):
    """Answers /elsewhere with a redirect to `target`, and anything else with the Authorization it was sent."""

    target = ""

    def do_GET(self) -> None:
        if self.path == "/elsewhere":
            self.send_response(302)
            self.send_header("Location", self.server.target + "/landed")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"authorization": self.headers.get("Authorization")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_redirect_to_another_host_is_followed_without_the_key(server):
    port = server.server_address[1]
    server.target = f"http://localhost:{port}"  # the same loopback server, under another host name
    answer = Client(f"http://127.0.0.1:{port}", "ain_secret").get("/elsewhere")
    assert answer.body == {"authorization": None}


def test_a_redirect_on_the_same_host_keeps_the_key(server):
    port = server.server_address[1]
    server.target = f"http://127.0.0.1:{port}"
    answer = Client(f"http://127.0.0.1:{port}", "ain_secret").get("/elsewhere")
    assert answer.body == {"authorization": "Bearer ain_secret"}
