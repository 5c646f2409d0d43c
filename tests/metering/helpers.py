"""Helpers of the metering tests: a recording proxy in front of the real AI node, the check that a job was billed
as the node counted, and a prefix for scripts that speak raw HTTP to the job's gateway.

The proof that a job is billed right has to know the node's own token counts without asking our code. So each
test points the job's node at a `RecordingProxy`: a tiny HTTP server on 127.0.0.1 that forwards every request to
the real node (llama.cpp's OpenAI API, or the Ollama front beside it) and writes down the counts from each answer,
streamed or not. Like the node, it keeps the gateway's connections alive between requests. The real model answers every call; the proxy only watches. One variant strips the counts from the
answers, to stand for a node that does not report them.
"""
from __future__ import annotations

import http.client
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from tests.fixtures.ai_node import AINode

MODEL_CALL_PATHS = frozenset({"/api/generate", "/api/chat", "/v1/completions", "/v1/chat/completions"})
COUNT_FIELDS = ("usage", "prompt_eval_count", "eval_count")
KINDS = ("openai", "ollama")

# --- the recording proxy ----------------------------------------------------------------------------------------

@dataclass
class NodeAnswer:
    """One model call as the node itself answered it."""

    path: str
    streamed: bool
    requested_max_tokens: int | None  # what the gateway asked the node for (max_tokens / num_predict)
    prompt_tokens: int | None
    completion_tokens: int | None
    status: int  # the node's HTTP status; a refused call carries no counts


def _counts(event: dict[str, Any]) -> tuple[int | None, int | None] | None:
    """The token counts an answer (or one stream event) carries, in either API; None when it carries none."""
    usage = event.get("usage")
    if isinstance(usage, dict) and ("prompt_tokens" in usage or "completion_tokens" in usage):
        return usage.get("prompt_tokens"), usage.get("completion_tokens")
    if "prompt_eval_count" in event or "eval_count" in event:
        return event.get("prompt_eval_count"), event.get("eval_count")
    return None


def _requested_max_tokens(body: dict[str, Any]) -> int | None:
    if "max_tokens" in body:
        return body["max_tokens"]
    return (body.get("options") or {}).get("num_predict")


class _ProxyHandler(BaseHTTPRequestHandler):
    """Serves one connection from the gateway, kept alive across requests as the real node keeps it."""

    server: "_ProxyServer"
    protocol_version = "HTTP/1.1"
    served = 0  # requests answered on this connection

    def setup(self) -> None:
        super().setup()
        self.server.proxy.count_connection()

    def do_GET(self) -> None:
        self._forward("GET")

    def do_POST(self) -> None:
        self._forward("POST")

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _forward(self, method: str) -> None:
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if self.served and proxy.hang_up_kept_alive:
            # A node that closes a kept-alive connection just as the next request arrives: never read, never run.
            proxy.count_hang_up()
            self.close_connection = True
            return
        self.served += 1
        upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=300)
        try:
            upstream.request(method, self.path, body, {"Content-Type": "application/json"})
            response = upstream.getresponse()
            is_call = method == "POST" and self.path in MODEL_CALL_PATHS
            content_type = response.getheader("Content-Type", "")
            if is_call and response.status == 200 and ("event-stream" in content_type or "ndjson" in content_type):
                self._relay_stream(response, content_type, json.loads(body))
            else:
                data = response.read()
                if is_call:
                    data = self._record_whole(data, json.loads(body), response.status)
                self._send(response.status, content_type, data)
        finally:
            upstream.close()

    def _record_whole(self, data: bytes, request: dict[str, Any], status: int) -> bytes:
        answer = json.loads(data) if status == 200 else {}
        counts = _counts(answer) if isinstance(answer, dict) else None
        self.server.proxy.record(NodeAnswer(self.path, False, _requested_max_tokens(request),
                                            *(counts or (None, None)), status))
        if status == 200 and self.server.proxy.strip_usage:
            data = json.dumps({k: v for k, v in answer.items() if k not in COUNT_FIELDS}).encode()
        return data

    def _relay_stream(self, response: http.client.HTTPResponse, content_type: str, request: dict[str, Any]) -> None:
        """Relay line by line as the node sends, in chunks as the node does (so the connection may carry the next
        request); a body the node broke off is broken off here too (no last chunk, the connection closes)."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        counts = None
        while line := response.readline():
            payload = line[5:].strip() if line.startswith(b"data:") else line.strip()
            event = None
            if payload and payload != b"[DONE]":
                try:
                    event = json.loads(payload)
                except ValueError:
                    event = None
            if isinstance(event, dict):
                counts = _counts(event) or counts
                if self.server.proxy.strip_usage and any(k in event for k in COUNT_FIELDS):
                    stripped = json.dumps({k: v for k, v in event.items() if k not in COUNT_FIELDS}).encode()
                    line = (b"data: " + stripped if line.startswith(b"data:") else stripped) + b"\n"
            try:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            except OSError:
                self.close_connection = True
                break  # the gateway hung up: a plain proxy stops reading the node too
        else:
            try:
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                self.close_connection = True
        self.server.proxy.record(NodeAnswer(self.path, True, _requested_max_tokens(request),
                                            *(counts or (None, None)), 200))

    def _send(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type or "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    proxy: "RecordingProxy"


class RecordingProxy:
    """Forwards to a real node and records the counts in each of its answers. `kind` is the node's API; `port` is
    a free one by default (a test may give a stopped proxy's, to bring "the node" back where it was)."""

    def __init__(self, upstream_url: str, kind: str, *, strip_usage: bool = False, port: int = 0):
        self.upstream = urlsplit(upstream_url)
        self.kind = kind
        self.strip_usage = strip_usage
        self.answers: list[NodeAnswer] = []
        self.connections = 0  # connections the gateway opened to the node
        self.hang_up_kept_alive = False  # when set, a request on a connection that served one already is dropped
        self.hang_ups = 0
        self._lock = threading.Lock()
        self._server = _ProxyServer(("127.0.0.1", port), _ProxyHandler)
        self._server.proxy = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)

    def start(self) -> "RecordingProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def record(self, answer: NodeAnswer) -> None:
        with self._lock:
            self.answers.append(answer)

    def count_connection(self) -> None:
        with self._lock:
            self.connections += 1

    def count_hang_up(self) -> None:
        with self._lock:
            self.hang_ups += 1

    def totals(self) -> tuple[int, int]:
        """(prompt, completion) tokens summed over every answer the node gave, as the node counted them."""
        with self._lock:
            return (sum(a.prompt_tokens or 0 for a in self.answers),
                    sum(a.completion_tokens or 0 for a in self.answers))


# --- billing -----------------------------------------------------------------------------------------------------

def assert_billed_as_node_counted(job: Any, node: RecordingProxy) -> None:
    """The job's tokens equal the node's own counts, and the job's totals equal the sums of its ledger rows."""
    from jobs.metering.ledger import ledger_totals

    assert job.status == "succeeded", (job.error_code, job.error_message, job.stderr[-3000:])
    assert (job.prompt_tokens, job.completion_tokens) == node.totals(), node.answers
    ledger = ledger_totals(str(job.pk))
    assert ledger == {"prompt_tokens": job.prompt_tokens, "completion_tokens": job.completion_tokens,
                      "llm_calls": job.llm_calls, "unmetered_calls": job.unmetered_calls,
                      "estimated_calls": job.estimated_calls}
    assert job.llm_calls == len(node.answers)
    assert job.unmetered_calls == 0 and job.estimated_calls == 0


# --- raw HTTP from inside a job -------------------------------------------------------------------------------------

# Prepended to scripts that talk to the gateway without the SDK: plain http.client over the job's Unix socket.
RAW_HTTP = '''
import http.client, json, os, socket

GATEWAY_SOCKET = os.environ["AI_ENDPOINT"][len("unix://"):]


class GatewayConnection(http.client.HTTPConnection):
    def __init__(self, timeout=120):
        super().__init__("gateway", timeout=timeout)

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(GATEWAY_SOCKET)


def send(method, path, body=None, raw=None):
    """(status, content type, body bytes) of one request; `raw` is sent as the body as it is."""
    connection = GatewayConnection()
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    connection.request(method, path, data, {"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    return response.status, response.getheader("Content-Type"), payload


def events(content_type, payload):
    """The JSON events of a streamed answer: NDJSON lines, or SSE `data:` lines without [DONE]."""
    found = []
    for line in payload.splitlines():
        line = line.strip()
        if line.startswith(b"data:"):
            line = line[5:].strip()
            if line == b"[DONE]":
                continue
        if line:
            found.append(json.loads(line))
    return found


def counts_of(event):
    usage = event.get("usage")
    if isinstance(usage, dict):
        return [usage.get("prompt_tokens"), usage.get("completion_tokens")]
    if "prompt_eval_count" in event or "eval_count" in event:
        return [event.get("prompt_eval_count"), event.get("eval_count")]
    return None
'''


def use_node(settings: Any, real_node: AINode, kind: str, *, strip_usage: bool = False) -> RecordingProxy:
    """Route every model to a recording proxy in front of the real node's `kind` API, and sync the catalogue."""
    upstream = real_node.openai_url if kind == "openai" else real_node.ollama_url
    proxy = RecordingProxy(upstream, kind, strip_usage=strip_usage).start()
    # Every model routes to this one node; `submit_job` records its name on the job and the runner finds it again.
    settings.AI_NODES = json.dumps([{"name": f"recorded-{kind}", "kind": kind, "url": proxy.url,
                                     "queue": settings.JOB_QUEUE}])
    settings.AI_NODE_URL, settings.AI_NODE_KIND = proxy.url, kind
    from models_catalog.services import sync_catalogue

    sync_catalogue(timeout_ms=10_000)
    return proxy
