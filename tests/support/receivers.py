"""A real HTTP server on 127.0.0.1 that receives events: it answers each request as its script says (a status, after
a pause), and keeps what it received (headers, body) for the test to read."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """`script` is a list of (status, pause in seconds), one per request in order; after it, `then` answers."""

    script: list[tuple[int, float]] = field(default_factory=list)
    then: tuple[int, float] = (200, 0.0)
    received: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    status, pause = receiver.script.pop(0) if receiver.script else receiver.then
                    receiver.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body,
                                                      time.time()))
                time.sleep(pause)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    self.end_headers()
                    self.wfile.write(b"ok" if status < 300 else b"not now")
                except OSError:  # the sender gave up waiting
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def ids(self) -> list[str]:
        return [r.headers["webhook-id"] for r in self.received]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
