"""`ai_client` outside a container: retries with backoff, refusals, timeouts, and local development on a node.

The retry logic is tested against a tiny local HTTP server that misbehaves on purpose (ai_client works with
AI_ENDPOINT=http://127.0.0.1:PORT); the last test uses the real node, as a developer would.
"""
from __future__ import annotations

import importlib
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SDK_DIR = Path(__file__).resolve().parents[2] / "sdk"
ANSWER = {"model": "m", "response": "fine", "done": True, "done_reason": "stop", "prompt_eval_count": 3,
          "eval_count": 1}


@pytest.fixture(scope="module")
def ai_client() -> Iterator[ModuleType]:
    """The SDK exactly as a container imports it: its folder on sys.path, nothing installed."""
    sys.path.insert(0, str(SDK_DIR))
    try:
        yield importlib.import_module("ai_client")
    finally:
        sys.path.remove(str(SDK_DIR))


class Misbehaving(ThreadingHTTPServer):
    """Answers the n-th request with `plan[n]`: an HTTP status, "drop" (hang up unanswered), "hang" (say
    nothing for a while), "ok" or "ok-stream". Past the plan's end it repeats the plan's last step."""

    daemon_threads = True

    def __init__(self, plan: list[Any], port: int = 0):
        super().__init__(("127.0.0.1", port), _MisbehavingHandler)
        self.plan = plan
        self.requests: list[tuple[float, str, str, bytes]] = []  # (time, method, path, body)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def next_step(self, method: str, path: str, body: bytes) -> Any:
        with self._lock:
            step = self.plan[min(len(self.requests), len(self.plan) - 1)]
            self.requests.append((time.monotonic(), method, path, body))
            return step


class _MisbehavingHandler(BaseHTTPRequestHandler):
    server: Misbehaving
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def _answer(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        step = self.server.next_step(method, self.path, body)
        if step == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if step == "hang":
            time.sleep(3)
            self.close_connection = True
            return
        if step == "ok-stream":
            lines = [{"model": "m", "response": piece, "done": False} for piece in ("fi", "ne")]
            lines.append({**ANSWER, "response": ""})
            data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
            self._send(200, data, "application/x-ndjson")
            return
        if step == "ok":
            self._send(200, json.dumps(ANSWER).encode(), "application/json")
            return
        status, code = step if isinstance(step, tuple) else (step, f"status_{step}")
        self._send(status, json.dumps({"error": f"refused with {status}", "code": code}).encode(), "application/json")

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def misbehaving(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A factory: `misbehaving(plan)` starts a server and points AI_ENDPOINT at it."""
    servers: list[Misbehaving] = []

    def start(plan: list[Any]) -> Misbehaving:
        server = Misbehaving(plan)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        monkeypatch.setenv("AI_ENDPOINT", server.url)
        monkeypatch.setenv("LLM_MODEL", "m")
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("failures", [[503, 503], [429, 502], [500, 504], ["drop", "drop"], [503, "drop"]])
def test_it_retries_a_call_that_fails_twice_then_answers(ai_client, misbehaving, failures):
    server = misbehaving([*failures, "ok"])

    assert ai_client.generate("Hi", temperature=0) == "fine"

    assert len(server.requests) == 3
    bodies = {body for _, _, _, body in server.requests}
    assert len(bodies) == 1, "each attempt sends the same call"
    assert json.loads(bodies.pop()) == {"model": "m", "prompt": "Hi", "stream": False,
                                        "options": {"temperature": 0}}


def test_it_retries_a_chat_and_a_stream_before_they_start(ai_client, misbehaving):
    misbehaving([502, "drop", "ok-stream"])
    assert list(ai_client.generate("Hi", stream=True)) == ["fi", "ne", ""]

    server = misbehaving([429, 503, "ok"])
    assert isinstance(ai_client.chat([{"role": "user", "content": "Hi"}]), str)
    assert len(server.requests) == 3


def test_it_retries_when_nothing_listens_yet(ai_client, monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AI_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("LLM_MODEL", "m")
    late: list[Misbehaving] = []

    def start_late() -> None:
        time.sleep(0.1)  # the first attempt is refused; the first backoff is at least 0.125 s
        server = Misbehaving(["ok"], port)
        late.append(server)
        server.serve_forever(poll_interval=0.05)

    threading.Thread(target=start_late, daemon=True).start()
    try:
        assert ai_client.generate("Hi") == "fine"
    finally:
        for server in late:
            server.shutdown()
            server.server_close()
    assert len(late[0].requests) == 1


def test_it_backs_off_longer_after_each_failure_with_jitter(ai_client, misbehaving):
    server = misbehaving([503, 503, 503, "ok"])

    assert ai_client.generate("Hi") == "fine"

    times = [when for when, *_ in server.requests]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    # Backoff base 0.25 s doubling, each wait scaled by a random factor in [0.5, 1.5).
    for gap, base in zip(gaps, (0.25, 0.5, 1.0)):
        assert 0.5 * base <= gap <= 1.5 * base + 0.25, gaps


def test_it_gives_up_after_its_retries_with_the_last_error_and_its_code(ai_client, misbehaving):
    server = misbehaving([(503, "node_unreachable")])

    with pytest.raises(ai_client.AIClientError) as raised:
        ai_client.generate("Hi")

    assert (raised.value.code, raised.value.status) == ("node_unreachable", 503)
    assert len(server.requests) == ai_client.RETRIES + 1


@pytest.mark.parametrize(("status", "code", "exception"), [
    (403, "model_not_allowed", "ModelNotAllowed"),
    (402, "budget_exhausted", "BudgetExhausted"),
    (400, "malformed_json", "AIClientError"),
    (413, "body_too_large", "AIClientError"),
])
def test_it_raises_a_refusal_at_once_with_the_gateways_code(ai_client, misbehaving, status, code, exception):
    server = misbehaving([(status, code)])

    with pytest.raises(ai_client.AIClientError) as raised:
        ai_client.chat([{"role": "user", "content": "Hi"}])

    assert type(raised.value).__name__ == exception
    assert (raised.value.code, raised.value.status) == (code, status)
    assert len(server.requests) == 1


def test_budget_exhausted_is_raised_as_its_own_exception(ai_client, misbehaving):
    misbehaving([(402, "budget_exhausted")])

    with pytest.raises(ai_client.BudgetExhausted) as raised:
        ai_client.generate("Hi")

    assert raised.value.code == "budget_exhausted"


def test_a_silent_server_raises_a_timeout_instead_of_hanging(ai_client, misbehaving):
    server = misbehaving(["hang"])

    started = time.monotonic()
    with pytest.raises(ai_client.AIClientError) as raised:
        ai_client.generate("Hi", timeout=0.3)
    elapsed = time.monotonic() - started

    assert raised.value.code == "timeout"
    # A call that timed out may still be running on the node: it is not sent again, and it is not billed twice.
    assert len(server.requests) == 1
    assert elapsed < 2


def test_a_stream_that_goes_silent_raises_a_timeout(ai_client, monkeypatch):
    """The server sends the stream's first line, then nothing: the script gets the SDK's error, not a raw one."""
    class HalfStream(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(json.dumps({"response": "fi", "done": False}).encode() + b"\n")
            self.wfile.flush()
            time.sleep(3)

    server = ThreadingHTTPServer(("127.0.0.1", 0), HalfStream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setenv("AI_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        pieces = ai_client.generate("Hi", model="m", stream=True, timeout=0.5)
        assert next(pieces) == "fi"
        with pytest.raises(ai_client.AIClientError) as raised:
            next(pieces)
        assert raised.value.code == "timeout"
    finally:
        server.shutdown()
        server.server_close()


def test_it_develops_a_script_against_a_real_node_outside_a_job(ai_client, real_node, monkeypatch):
    monkeypatch.setenv("AI_ENDPOINT", real_node.ollama_url)
    monkeypatch.setenv("LLM_MODEL", real_node.model_id)

    assert isinstance(ai_client.generate("Say hi.", temperature=0, seed=42, max_tokens=4), str)
    assert isinstance(ai_client.chat([{"role": "user", "content": "Hi"}], temperature=0, seed=42, max_tokens=4), str)
    pieces = list(ai_client.chat([{"role": "user", "content": "Hi"}], stream=True, temperature=0, max_tokens=4))
    assert pieces and all(isinstance(piece, str) for piece in pieces)
    assert real_node.model_id in ai_client.list_models()
