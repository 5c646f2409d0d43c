"""The per-job gateway: an HTTP server on a Unix socket, the job container's only door to the outside.

The worker starts one for each job and mounts its folder into the container. It serves:
- the model APIs (Ollama's and OpenAI's, whatever the node's kind), forwarding only the models the job may use to
  the node each is routed to, capping each call's output to the job's budget, and writing one ledger row per call
  with the token counts taken from the node's own answer;
- `/_job/usage` (the running totals) and `/_job/result` (the runtime's report of the script's end).
Everything a request body may hold is bounded, node management is refused, and an unknown route gets 404, so a
hostile script reaches nothing else and cannot change what it is billed.
"""
import functools
import json
import logging
import os
import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from collections.abc import Callable
from typing import Any

from django.db import connections

from models_catalog.nodes import Completion, NodeError, client_for

from . import wire
from .ledger import record_call
from .meter import BudgetExhausted, Meter, prompt_bound

logger = logging.getLogger(__name__)

SOCKET_NAME = "gateway.sock"


@dataclass
class ResultReport:
    """What the runtime inside the container reported about the script's end."""

    received: bool = False
    result: Any = None
    error: dict[str, Any] | None = None
    peak_memory_bytes: int | None = None
    rejected_code: str = ""


@dataclass(frozen=True)
class ModelRoute:
    """Where one model the job may call is served."""

    model_id: str
    node: str
    kind: str
    url: str


@dataclass
class GatewayConfig:
    job_id: str
    default_model: str
    routes: dict[str, ModelRoute] = field(default_factory=dict)
    budget: int | None = None
    max_output_tokens: int = 2048
    call_timeout: float = 120.0
    max_body_bytes: int = 1024 * 1024
    max_concurrent_calls: int = 4
    result_limit: int = 1024 * 1024


def _status_for(error: NodeError) -> int:
    """The status a script gets for a node's failure. A node that refused the request itself (4xx: a prompt longer
    than its context, say) answers 400, which clients do not retry: the same call would only be refused, and
    billed as an unknown call, again. Everything else is the node's trouble (502), worth a retry."""
    if error.code == "model_not_found":
        return 404
    if error.status is not None and 400 <= error.status < 500 and error.status != 429:
        return 400
    return 502


class GatewayRequestError(Exception):
    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Counts the connections being served, from their accept to their end, so that `stop` can wait for them."""

    daemon_threads = True
    # A script's threads may connect all at once; socketserver's default backlog of 5 refuses the rest (EAGAIN).
    request_queue_size = 128
    gateway: "JobGateway"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.active = 0
        self.idle = threading.Condition()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.idle:
            self.active += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._served()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            # Each request has a thread of its own, and Django a connection per thread: close the ones this request
            # opened (to write the ledger), or every model call would leave a database session behind.
            connections.close_all()
            self._served()

    def _served(self) -> None:
        with self.idle:
            self.active -= 1
            self.idle.notify_all()

    def shutdown(self) -> None:
        """socketserver's, but the serving loop is woken by a connection at once instead of noticing at its next
        poll: a job's end would otherwise wait up to the poll interval."""
        stopper = threading.Thread(target=super().shutdown, daemon=True)
        stopper.start()
        while stopper.is_alive():
            self._poke()
            stopper.join(0.005)

    def _poke(self) -> None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as poke:
                poke.settimeout(1)
                poke.connect(self.server_address)
        except OSError:
            pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "infra-ainode-gateway"
    sys_version = ""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # Ollama deletes a model with DELETE /api/delete and pushes blobs with HEAD/POST: every method goes through
    # _dispatch, so that node management is refused as route_forbidden whatever the method.
    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def _dispatch(self, method: str) -> None:
        gateway = self.server.gateway
        # One handler serves every request of a kept-alive connection: per-request state starts afresh.
        self.body_read, self.stream_started, self.listening = False, False, True
        self.after_answer = None
        self.route_path = path = self.path.split("?", 1)[0]
        try:
            try:
                if path in wire.FORBIDDEN_ROUTES or path.startswith("/api/blobs/"):
                    raise GatewayRequestError(403, "route_forbidden", f"{path} is not available to jobs.")
                route = gateway.routes.get((method, path))
                if route is None:
                    raise GatewayRequestError(404, "not_found", f"No route {method} {path}.")
                answer = route(self)
            except GatewayRequestError as exc:
                answer = exc.status, {"error": exc.detail, "code": exc.code}
                self.close_connection = True
                self._discard_body(gateway.config.max_body_bytes)
            if answer is not None:  # a streamed answer has been written already
                self.send_json(*answer)
        finally:
            # Work deferred until the answer is out (a model call's ledger row). It runs before this request counts
            # as served, so the gateway's stop, and the job's totals after it, still wait for it.
            after, self.after_answer = self.after_answer, None
            if after is not None:
                after()

    body_read = False
    after_answer: Callable[[], Any] | None = None

    def read_json(self, limit: int) -> Any:
        """The request's JSON body; refuses bodies over `limit` bytes before reading them."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise GatewayRequestError(411, "length_required", "Content-Length is required.") from None
        if length < 0 or length > limit:
            raise GatewayRequestError(413, "body_too_large", f"Body larger than {limit} bytes.")
        self.body_read = True
        try:
            # NaN and Infinity are not JSON: PostgreSQL would refuse them and clients could not parse them back.
            return json.loads(self.rfile.read(length), parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError):
            raise GatewayRequestError(400, "malformed_json", "The body is not valid JSON.") from None

    def _discard_body(self, limit: int) -> None:
        """Read and drop a refused request's body when it is small: a client still sending it would otherwise hit
        a broken pipe instead of reading why it was refused. A large body is not read: the refusal closes on it."""
        if self.body_read:
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return
        if 0 < length <= limit:
            self.body_read = True
            self.rfile.read(length)

    stream_started = False
    listening = True  # False once the script has hung up on a stream

    def start_stream(self, content_type: str) -> bool:
        """Begin a streamed answer (the connection's end marks the body's end); False when the script hung up."""
        self.stream_started = True
        try:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.flush()
            return True
        except OSError:
            return False

    def write_frame(self, data: bytes) -> bool:
        """Write one frame of a stream; False when the script has hung up."""
        try:
            self.wfile.write(data)
            self.wfile.flush()
            return True
        except OSError:
            return False

    def send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def address_string(self) -> str:
        return "job-container"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("job %s gateway: " + format, self.server.gateway.job_id, *args)


class JobGateway:
    """Serves one job. `start()` binds the socket; `stop()` closes it; `report` holds the posted result."""

    def __init__(self, config: GatewayConfig, *, socket_dir: str):
        self.config = config
        self.job_id = config.job_id
        self.socket_path = os.path.join(socket_dir, SOCKET_NAME)
        self.report = ResultReport()
        self.meter = Meter(budget=config.budget, max_output_tokens=config.max_output_tokens)
        self._lock = threading.Lock()
        self._calls = threading.BoundedSemaphore(config.max_concurrent_calls)
        self.routes = {
            ("POST", "/_job/result"): self._post_result,
            ("GET", "/_job/usage"): lambda request: (200, self.meter.snapshot()),
            ("GET", "/api/tags"): lambda request: (200, wire.ollama_tags(sorted(config.routes))),
            ("GET", "/v1/models"): lambda request: (200, wire.openai_models(sorted(config.routes))),
            ("GET", "/api/version"): lambda request: (200, {"version": "0.0.0-infra-ainode-gateway"}),
        }
        for path in wire.ROUTES:
            self.routes[("POST", path)] = self._model_call
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "JobGateway":
        self._server = _Server(self.socket_path, _Handler)
        self._server.gateway = self
        # The container runs as an unprivileged user that must be able to connect.
        os.chmod(self.socket_path, 0o666)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name=f"gateway-{self.job_id}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, wait (at most `drain_timeout`, default the call timeout) for the requests being served,
        then close. Once the job's container has gone, the only requests left are model calls whose node is still
        answering (a script may hang up on a stream and exit): waiting puts them on the ledger before the job's
        totals are written. Idempotent."""
        if self._server is not None:
            self._server.shutdown()
            timeout = self.config.call_timeout if drain_timeout is None else drain_timeout
            with self._server.idle:
                if not self._server.idle.wait_for(lambda: self._server.active == 0, timeout):
                    logger.warning("job %s: %d gateway requests still running after %.0f s; they are recorded "
                                   "when they end", self.job_id, self._server.active, timeout)
            self._server.server_close()
            self._server = None
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass

    def _post_result(self, request: _Handler) -> tuple[int, dict[str, Any]]:
        try:
            body = request.read_json(self.config.result_limit)
        except GatewayRequestError as exc:
            if exc.code == "body_too_large":
                self.report.rejected_code = "result_too_large"
            raise
        if not isinstance(body, dict):
            raise GatewayRequestError(400, "malformed_result", "The result report must be a JSON object.")
        with self._lock:
            if self.report.received:
                raise GatewayRequestError(409, "result_already_reported", "The result was already reported.")
            self.report.received = True
            self.report.result = body.get("result")
            error = body.get("error")
            self.report.error = error if isinstance(error, dict) else None
            peak = body.get("peakMemoryBytes")
            self.report.peak_memory_bytes = peak if isinstance(peak, int) and peak > 0 else None
        return 200, {"ok": True}

    # --- model calls -------------------------------------------------------------------------------------------

    def _model_call(self, request: _Handler) -> tuple[int, Any] | None:
        path = request.route_path
        try:
            call = wire.parse_request(path, request.read_json(self.config.max_body_bytes),
                                          default_model=self.config.default_model)
        except wire.WireError as exc:
            raise GatewayRequestError(400, "invalid_request", str(exc)) from None
        route = self.config.routes.get(call.model)
        if route is None:
            raise GatewayRequestError(
                403, "model_not_allowed",
                f"This job may not use model {call.model[:200]!r}; allowed: {', '.join(sorted(self.config.routes))}.",
            )
        call.model = route.model_id  # an alias the function allowed is forwarded (and billed) as its target
        # Bounding the calls in flight keeps one script from flooding the node (and holding many reservations).
        if not self._calls.acquire(timeout=self.config.call_timeout):
            raise GatewayRequestError(429, "too_many_calls", "Too many model calls in flight for this job.")
        try:
            return self._metered_call(request, path, call, route)
        finally:
            self._calls.release()

    def _metered_call(self, request: _Handler, path: str, call: wire.LLMRequest,
                      route: ModelRoute) -> tuple[int, Any] | None:
        """Reserve budget, forward the call, and put it on the ledger whatever happened."""
        try:
            reservation = self.meter.reserve(prompt_tokens_bound=prompt_bound(call.prompt_texts()),
                                             requested=call.options.get("max_tokens"))
        except BudgetExhausted as exc:
            raise GatewayRequestError(402, "budget_exhausted", str(exc)) from None
        options = {**call.options, "max_tokens": reservation.max_tokens}
        client = client_for(route.kind, route.url, self.config.call_timeout)
        frames = wire.StreamRenderer(call) if call.stream else None
        started = time.monotonic()
        completion: Completion | None = None
        error: NodeError | None = None
        try:
            if frames is not None:
                completion = self._stream(request, call, client, options, frames)
            elif call.op == wire.GENERATE:
                completion = client.generate(call.model, call.prompt, **options)
            else:
                completion = client.chat(call.model, call.messages, **options)
        except NodeError as exc:
            error = exc
        finally:
            # No completion means the node reported no counts: recorded as unknown, and the reservation stays
            # spent so that the budget holds even then.
            usage = completion.usage if completion else None
            self.meter.settle(reservation, usage)
            record = functools.partial(
                record_call,
                job_id=self.job_id, model_id=call.model, node=route.node, endpoint=path, streamed=call.stream,
                usage=usage, max_tokens=reservation.max_tokens,
                done_reason=completion.done_reason if completion else None,
                duration_ms=round((time.monotonic() - started) * 1000),
                node_duration_ms=completion.total_duration_ms if completion else None,
                error_code=error.code if error else "", error_message=str(error) if error else "",
            )
            if frames is None:
                # A whole answer goes out before its ledger row is written (the meter, which `usage()` reads, is
                # settled already): the row is written right after, before the request counts as served.
                request.after_answer = record
            else:
                record()
        if frames is not None and request.stream_started:
            # A stream's last frame goes out only once the call is on the ledger: a script that reads it and then
            # asks usage(), or exits, must find the call counted.
            if request.listening:
                request.write_frame(frames.final(completion) if completion is not None
                                    else frames.error(error.code, str(error)))
            return None
        if error is not None:
            return _status_for(error), {"error": str(error), "code": error.code}
        return 200, wire.render(call, completion)

    def _stream(self, request: _Handler, call: wire.LLMRequest, client, options: dict[str, Any],
                frames: wire.StreamRenderer) -> Completion:
        """Relay a streamed answer's text; the caller writes its last frame. If the script hangs up half way, the
        node's stream is still read to its end: the node generates those tokens either way, and only its final
        event says how many there were."""
        events = (client.stream_generate(call.model, call.prompt, **options) if call.op == wire.GENERATE
                  else client.stream_chat(call.model, call.messages, **options))
        request.close_connection = True
        for event in events:
            if request.listening and not request.stream_started:
                request.listening = request.start_stream(frames.content_type)
            if isinstance(event, Completion):
                return event
            if request.listening:
                request.listening = request.write_frame(frames.chunk(event))
        raise NodeError("node_bad_response", "The node's stream ended without its final event.")
