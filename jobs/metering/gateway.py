"""The per-job gateway: an HTTP server on a Unix socket, the job container's only door to the outside.

The worker starts one for each job and mounts its folder into the container. It serves:
- the model APIs (Ollama's and OpenAI's, whatever the node's kind), forwarding only the models the job may use to
  the node each is routed to, capping each call's output to the job's budget, and writing one ledger row per call
  with the token counts taken from the node's own answer (or, where the node did not report them, counted by the
  gateway and marked estimated);
- `/_job/usage` (the running totals) and `/_job/result` (the runtime's report of the script's end).
Everything a request body may hold is bounded, node management is refused, and an unknown route gets 404, so a
hostile script reaches nothing else and cannot change what it is billed. Its resources are bounded too: the
connections it may hold open, how long a connection may stay silent, and the calls in flight (a call's slot is
taken before its body is read, so waiting requests hold no memory).

A call lives only as long as someone wants its answer: when the script hangs up, or the job's container ends, the
node's answer is cancelled (the gateway closes its connection to the node) and the call is billed for what the
node generated until then; requests not yet forwarded are dropped unstarted.
"""
import itertools
import json
import logging
import os
import select
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from django.db import connections

from models_catalog.nodes import Cancellation, Completion, NodeClient, NodeError, Usage, client_for

from ..models import LLMCallStatus
from . import wire
from .ledger import LedgerWriter, record_call
from .meter import BudgetExhausted, Meter, Reservation, WaitAbandoned, prompt_bound

logger = logging.getLogger(__name__)

SOCKET_NAME = "gateway.sock"
PROMPT_COUNT_CACHE = 256  # prompts whose token count a gateway remembers (a script often repeats its prompt)
_REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s")
# The uid the job container's processes run as (jobs.runner.RUNTIME_USER): only they may report the result.
RUNTIME_UID = 10001


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
    max_connections: int = 32
    socket_timeout: float = 30.0
    drain_timeout: float = 5.0
    result_limit: int = 1024 * 1024
    # Told of each model call's start and end and of the running totals after it: (kind, data), kinds `llm_call`
    # and `usage` (see jobs.events). Called on the request's thread: it must return at once.
    on_event: Callable[[str, dict[str, Any]], None] | None = None


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


@dataclass(eq=False)
class _Waiting:
    """A handler thread waiting for its next connection, which the accepting thread hands it in `connection`."""

    thread: threading.Thread
    wake: threading.Condition
    connection: tuple[socket.socket, Any] | None = None


class _Server(socketserver.UnixStreamServer):
    """Serves each connection on a handler thread, from its accept to its end, and counts the connections being
    served so that `stop` can wait for them; refuses connections past the job's cap (and all of them once the job
    has ended) from the accepting thread, without handing them to a handler thread.

    Handler threads are kept for the next connection: the SDK opens a connection per call, and starting a thread
    for each would add its cost to every call. The accepting thread hands a connection to the thread that waited
    last, or starts one when none waits; a thread serves one connection at a time, so there are never more threads
    than the job's cap on connections, and a connection that a script keeps silent holds only its own thread.
    `server_close` ends the waiting threads, and the others once their connection ends.
    """

    # A script's threads may connect all at once; socketserver's default backlog of 5 refuses the rest (EAGAIN).
    request_queue_size = 128
    gateway: "JobGateway"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.active = 0
        # One lock for the counts, the sockets and the waiting threads; `idle` is notified whenever `active` drops.
        self._lock = threading.Lock()
        self.idle = threading.Condition(self._lock)
        self.open_sockets: set[socket.socket] = set()
        self.refused = 0
        self.stopping = False
        self._waiting: list[_Waiting] = []
        self._thread_numbers = itertools.count(1)
        self._closed = False

    def process_request(self, request: Any, client_address: Any) -> None:
        gateway = self.gateway
        waiting = None
        with self.idle:
            refuse = gateway.closing or self.active >= gateway.config.max_connections
            if not refuse:
                self.active += 1
                self.open_sockets.add(request)
                if self._waiting:
                    waiting = self._waiting.pop()  # the last to wait: its stack and caches are the warmest
                    waiting.connection = (request, client_address)
                    waiting.wake.notify()
        if refuse and self.stopping and _peer_pid(request) == os.getpid():
            self.shutdown_request(request)  # shutdown's own wake-up call, not a script's: nothing to answer
            return
        if refuse:
            self._refuse(request, "job_ended" if gateway.closing else "too_many_connections")
            return
        if waiting is None:
            thread = threading.Thread(target=self._handler_thread, args=(request, client_address), daemon=True,
                                      name=f"gateway-{gateway.job_id[:8]}-handler-{next(self._thread_numbers)}")
            try:
                thread.start()
            except BaseException:
                self._served(request)
                raise

    def _handler_thread(self, request: socket.socket, client_address: Any) -> None:
        """Serve the connection the thread was started for, then each one handed to it, until the server closes."""
        me = _Waiting(threading.current_thread(), threading.Condition(self._lock))
        connection: tuple[socket.socket, Any] | None = (request, client_address)
        while connection is not None:
            try:
                self.process_request_thread(*connection)
            except BaseException:  # the thread ends (the next connection starts another), its connection counted
                self._served(connection[0])
                raise
            connection = self._next_connection(connection[0], me)

    def _next_connection(self, served: socket.socket, me: _Waiting) -> tuple[socket.socket, Any] | None:
        """Count `served` as done with, and wait for the next connection: None once the server is closed."""
        with self.idle:
            self._count_served(served)
            me.connection = None
            if self._closed:
                return None
            self._waiting.append(me)
            while me.connection is None and not self._closed:
                me.wake.wait()
            return me.connection

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        """Serve one connection (as socketserver's ThreadingMixIn does, on the handler thread)."""
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            # Django has a connection per thread: the ledger is written on a thread of its own (see LedgerWriter),
            # but a row queued after the job's end is written here, and its connection must not stay open while
            # the thread waits for its next connection.
            connections.close_all()

    def server_close(self) -> None:
        """Close the socket and end the handler threads: the waiting ones now, the others once their connection
        ends (`stop` has waited for those)."""
        super().server_close()
        with self.idle:
            self._closed = True
            waiting, self._waiting = self._waiting, []
            for each in waiting:
                each.wake.notify()
        for each in waiting:
            each.thread.join(1.0)  # it has nothing left to do

    def _refuse(self, request: socket.socket, code: str) -> None:
        """Answer 503 and hang up, from the accepting thread: a few bytes that fit any socket buffer, sent without
        waiting, so a script cannot stall the gateway by not reading them."""
        if not self.refused:  # once per job: a script may try thousands
            logger.warning("job %s: gateway connections refused (%s)", self.gateway.job_id, code)
        self.refused += 1
        body = json.dumps({"error": "The gateway refused the connection.", "code": code}).encode()
        try:
            request.setblocking(False)
            request.send(_REFUSED % (len(body), body))
        except OSError:
            pass
        self.shutdown_request(request)

    def _served(self, request: socket.socket) -> None:
        with self.idle:
            self._count_served(request)

    def _count_served(self, request: socket.socket) -> None:
        """One connection fewer being served (the lock held)."""
        self.active -= 1
        self.open_sockets.discard(request)
        self.idle.notify_all()

    def shutdown(self) -> None:
        """socketserver's, but the serving loop is woken by a connection at once instead of noticing at its next
        poll: a job's end would otherwise wait up to the poll interval."""
        self.stopping = True
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

    def hang_up_all(self) -> None:
        """Shut every connection still open: handlers waiting for a script's bytes wake up and end."""
        with self.idle:
            sockets = list(self.open_sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "infra-ainode-gateway"
    sys_version = ""
    # Writes are buffered until an answer is whole (a stream flushes each frame): a non-streamed answer's head and
    # body go out in one write, so the script wakes once for them.
    wbufsize = -1

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

    def setup(self) -> None:
        # Every read and write on the script's connection waits at most this long: a script that goes silent
        # half way through a request, or stops reading an answer, loses the connection instead of holding a thread.
        self.timeout = self.server.gateway.config.socket_timeout
        super().setup()

    def _dispatch(self, method: str) -> None:
        gateway = self.server.gateway
        # One handler serves every request of a kept-alive connection: per-request state starts afresh.
        self.body_read, self.stream_started, self.listening = False, False, True
        self.after_answer: list[Callable[[], None]] = []
        self.route_path = path = self.path.split("?", 1)[0]
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
        except Exception:
            logger.exception("job %s: gateway failed on %s %s", gateway.job_id, method, path)
            answer = None if self.stream_started else (500, {"error": "The gateway failed.", "code": "internal_error"})
            self.close_connection = True
        try:
            if answer is not None:  # a streamed answer has been written already
                self.send_json(*answer)
                self.wfile.flush()
        except OSError:
            self.close_connection = True  # the script hung up or stopped reading
        finally:
            if self.stream_started:
                self._end_stream()
            # Before the handler is done with the request (which `stop` waits for), whatever became of the answer.
            for work in self.after_answer:
                work()

    def _end_stream(self) -> None:
        """A stream's body ends with its connection: say so now, not once the request's thread is done."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    body_read = False

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
            data = self.rfile.read(length)
        except TimeoutError:
            raise GatewayRequestError(408, "request_timeout", "The body did not arrive in time.") from None
        try:
            # NaN and Infinity are not JSON: PostgreSQL would refuse them and clients could not parse them back.
            return json.loads(data, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise GatewayRequestError(400, "malformed_json", "The body is not valid JSON (or nests too deep).") from None

    def _discard_body(self, limit: int) -> None:
        """Read and drop a refused request's body when it is small: a client still sending it would otherwise hit
        a broken pipe instead of reading why it was refused. A large body is not read: the refusal closes on it."""
        if self.body_read:
            return
        self.body_read = True
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return
        if not 0 < length <= limit:
            return
        try:
            while length > 0:
                chunk = self.rfile.read(min(length, 64 * 1024))
                if not chunk:
                    return
                length -= len(chunk)
        except OSError:
            pass

    def peer_gone(self) -> bool:
        """True when the script has hung up (its end of the socket is closed, with nothing left unread)."""
        if not self.listening:
            return True
        poller = select.poll()
        poller.register(self.connection, select.POLLIN | select.POLLRDHUP)
        try:
            events = poller.poll(0)
            if not events:
                return False
            if events[0][1] & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                return True
            # Readable: either the script's next bytes (still there) or its end of file (gone). The socket has a
            # timeout, so recv would wait on an empty socket; here it cannot be empty.
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

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


def _peer_uid(connection: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket connection (SO_PEERCRED), None when unknown."""
    return _peer_credentials(connection)[1]


def _peer_pid(connection: socket.socket) -> int | None:
    """The pid (as this process sees it) at the other end; a container's processes never have the worker's."""
    return _peer_credentials(connection)[0]


def _peer_credentials(connection: socket.socket) -> tuple[int | None, int | None]:
    try:
        credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None, None
    pid, uid, _gid = struct.unpack("3i", credentials)
    return pid, uid


class JobGateway:
    """Serves one job. `start()` binds the socket; `stop()` ends the job's calls and closes it; `report` holds the
    posted result."""

    def __init__(self, config: GatewayConfig, *, socket_dir: str):
        self.config = config
        self.job_id = config.job_id
        self.socket_path = os.path.join(socket_dir, SOCKET_NAME)
        self.report = ResultReport()
        self.meter = Meter(budget=config.budget, max_output_tokens=config.max_output_tokens)
        self.closing = False
        self._lock = threading.Lock()
        self._slots = threading.Condition()
        self._slots_used = 0
        self._in_flight: set[Cancellation] = set()
        # One client per node route for the gateway's life: they remember what a node serves between calls, and
        # keep their connections to it alive (one per call slot), so that a call does not wait for a new one.
        self._clients: dict[str, NodeClient] = {
            model: client_for(route.kind, route.url, config.call_timeout, keep_alive=config.max_concurrent_calls)
            for model, route in config.routes.items()
        }
        self._prompt_counts: dict[tuple, int] = {}
        self._ledger = LedgerWriter(config.job_id)
        self._events_lock = threading.Lock()
        self._call_numbers = itertools.count(1)
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
        """End the job's traffic and close; call it once the job's container has ended. Idempotent.

        New connections are refused; requests not yet forwarded to a node are dropped unstarted; calls in flight
        are cancelled at their node (their connection is closed) and put on the ledger with what the node
        generated until then. Waits at most `drain_timeout` (default `config.drain_timeout`) seconds for all that,
        and as long again for the ledger rows of the calls, so that the ledger is complete before the job's totals
        are taken from it.
        """
        server = self._server
        if server is not None:
            with self._lock:
                self.closing = True
                in_flight = list(self._in_flight)
            server.shutdown()  # no more accepts
            with self._slots:
                self._slots.notify_all()  # requests waiting for a call slot see `closing` and give up
            for cancellation in in_flight:
                cancellation.cancel("the job ended")
            server.hang_up_all()
            timeout = self.config.drain_timeout if drain_timeout is None else drain_timeout
            with server.idle:
                if not server.idle.wait_for(lambda: server.active == 0, timeout):
                    logger.warning("job %s: %d gateway requests still running after %.0f s; they are recorded "
                                   "when they end", self.job_id, server.active, timeout)
            server.server_close()
            self._server = None
            # The calls that ended are settled; their rows may still be queued. A second wait, as long as the first,
            # bounds a database that does not answer; normally it takes a few milliseconds.
            self._ledger.close(timeout)
        for client in self._clients.values():
            client.close()
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass

    def _post_result(self, request: _Handler) -> tuple[int, dict[str, Any]]:
        if _peer_uid(request.connection) != RUNTIME_UID:
            raise GatewayRequestError(403, "not_the_job", "Only the job's own container may report its result.")
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
        # The slot is taken before the body is read: requests waiting for one hold a thread but no memory.
        with self._call_slot():
            call = self._parse(request)
            route = self.config.routes.get(call.model)
            if route is None:
                raise GatewayRequestError(
                    403, "model_not_allowed",
                    f"This job may not use model {call.model[:200]!r}; allowed: "
                    f"{', '.join(sorted(self.config.routes))}.",
                )
            client = self._clients[call.model]
            call.model = route.model_id  # an alias the function allowed is forwarded (and billed) as its target
            return self._metered_call(request, call, route, client)

    @contextmanager
    def _call_slot(self) -> Iterator[None]:
        """Hold one of the job's call slots: bounding the calls in flight keeps one script from flooding the node
        (and from holding many reservations)."""
        deadline = time.monotonic() + self.config.call_timeout
        with self._slots:
            while self._slots_used >= self.config.max_concurrent_calls and not self.closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GatewayRequestError(429, "too_many_calls", "Too many model calls in flight for this job.")
                self._slots.wait(min(left, 0.5))
            if self.closing:
                raise GatewayRequestError(503, "job_ended", "The job has ended.")
            self._slots_used += 1
        try:
            yield
        finally:
            with self._slots:
                self._slots_used -= 1
                self._slots.notify()

    def _parse(self, request: _Handler) -> wire.LLMRequest:
        body = request.read_json(self.config.max_body_bytes)
        try:
            return wire.parse_request(request.route_path, body, default_model=self.config.default_model)
        except wire.WireError as exc:
            raise GatewayRequestError(400, exc.code, str(exc)) from None
        except (TypeError, AttributeError, RecursionError):  # a shape the parser did not foresee
            raise GatewayRequestError(400, "invalid_request", "The request's fields have the wrong types.") from None

    def _metered_call(self, request: _Handler, call: wire.LLMRequest, route: ModelRoute,
                      client: NodeClient) -> tuple[int, Any] | None:
        """Reserve budget, forward the call, answer, and put the call on the ledger whatever happened."""
        reservation = self._reserve(request, call, client)
        cancellation = Cancellation()
        with self._lock:
            dropped = self.closing or request.peer_gone()
            if not dropped:
                self._in_flight.add(cancellation)
        if dropped:  # nobody waits for the answer any more: the call is never started, and not billed
            self.meter.release(reservation)
            raise GatewayRequestError(503, "call_dropped", "The job ended or the script hung up.")
        options = {**call.options, "max_tokens": reservation.max_tokens}
        number = next(self._call_numbers)
        described = {"call": number, "model": call.model, "streamed": call.stream, "endpoint": request.route_path}
        self._tell("llm_call", {"phase": "start", **described, "maxTokens": reservation.max_tokens})
        frames = wire.StreamRenderer(call) if call.stream else None
        started = time.monotonic()
        outcome = _Outcome()
        try:
            self._relay(request, call, client, options, cancellation, frames, outcome)
        except Exception:  # a fault of ours: the call still settles, so its reservation is not held for ever
            logger.exception("job %s: relaying a %s call failed", self.job_id, call.model)
            outcome.error = NodeError("node_bad_response", "The gateway could not relay the node's answer.")
        finally:
            with self._lock:
                self._in_flight.discard(cancellation)
        usage, estimated = self._usage_of(client, call, reservation, outcome)
        self.meter.settle(reservation, usage, estimated=estimated)
        completion, error = outcome.completion, outcome.error
        endpoint, duration_ms = request.route_path, round((time.monotonic() - started) * 1000)
        # Told before the answer goes out, so that a watcher sees the call end before whatever the script does
        # next; the counts are those the ledger row will hold.
        self._tell_call_end(described, usage=usage, estimated=estimated, completion=completion, error=error,
                            duration_ms=duration_ms)
        # The row is written on the ledger's thread, off the answer's path (`stop` waits for it), and queued once the
        # answer is out: that thread's Python would otherwise hold the interpreter lock while the answer is written.
        request.after_answer.append(lambda: self._ledger.write(lambda: self._record(
            call, endpoint, route, reservation, usage, estimated, completion, error, duration_ms)))
        if frames is not None and request.stream_started:
            # A stream's last frame goes out once the call is settled: a script that reads it and then asks
            # usage() must find the call counted.
            if request.listening:
                request.write_frame(frames.final(completion) if completion is not None
                                    else frames.error(error.code, error.public_message))
            return None
        if error is not None:
            return _status_for(error), {"error": error.public_message, "code": error.code}
        return 200, wire.render(call, completion)

    def _reserve(self, request: _Handler, call: wire.LLMRequest, client: NodeClient) -> Reservation:
        """Hold room in the budget for the call: its prompt's exact count where the node can tokenize (only asked
        when the job has a budget), else a bound. Waits (at most the call timeout) for calls in flight to settle."""
        exact = self._prompt_count(client, call) if self.meter.budget is not None else None
        try:
            return self.meter.reserve(
                prompt_tokens=exact if exact is not None else prompt_bound(call.prompt_texts()),
                prompt_exact=exact is not None, requested=call.options.get("max_tokens"),
                wait=self.config.call_timeout, abandon=lambda: self.closing or request.peer_gone(),
            )
        except BudgetExhausted as exc:
            raise GatewayRequestError(402, "budget_exhausted", str(exc)) from None
        except WaitAbandoned:
            raise GatewayRequestError(503, "call_dropped", "The job ended or the script hung up.") from None

    def _prompt_count(self, client: NodeClient, call: wire.LLMRequest) -> int | None:
        if call.op == wire.GENERATE:
            key: tuple = (call.model, call.op, call.raw, call.system, call.prompt)
        else:
            key = (call.model, call.op, json.dumps(call.messages))
        with self._lock:
            if key in self._prompt_counts:
                return self._prompt_counts[key]
        if call.op == wire.GENERATE:
            count = client.count_prompt_tokens(call.model, prompt=call.prompt, system=call.system, raw=call.raw)
        else:
            count = client.count_prompt_tokens(call.model, messages=call.messages)
        if count is not None:
            with self._lock:
                if len(self._prompt_counts) >= PROMPT_COUNT_CACHE:
                    self._prompt_counts.clear()
                self._prompt_counts[key] = count
        return count

    def _relay(self, request: _Handler, call: wire.LLMRequest, client: NodeClient, options: dict[str, Any],
               cancellation: Cancellation, frames: "wire.StreamRenderer | None", outcome: "_Outcome") -> None:
        """Forward the call and relay its answer. The node is always asked for a stream, so that the gateway
        knows what it generated even when the call does not end well; a streamed call is relayed piece by piece,
        a whole one gathered. The call is cancelled at the node as soon as the script hangs up, and a whole call
        (whose script waits with nothing) once it runs past the call timeout."""
        if frames is not None:
            request.close_connection = True
        deadline = time.monotonic() + self.config.call_timeout
        events = (client.stream_generate(call.model, call.prompt, system=call.system, raw=call.raw,
                                         cancel=cancellation, **options)
                  if call.op == wire.GENERATE else
                  client.stream_chat(call.model, call.messages, cancel=cancellation, **options))
        try:
            for event in events:
                if isinstance(event, Completion):
                    outcome.completion = event
                    return
                outcome.pieces.append(event)
                if frames is not None:
                    if request.listening and not request.stream_started:
                        request.listening = request.start_stream(frames.content_type)
                    if request.listening:
                        request.listening = request.write_frame(frames.chunk(event))
                if request.peer_gone():
                    cancellation.cancel("the script hung up")
                elif frames is None and time.monotonic() > deadline:
                    outcome.timed_out = True
                    cancellation.cancel(f"it ran past the call timeout ({self.config.call_timeout:g} s)")
            outcome.error = NodeError("node_bad_response", "The node's stream ended without its final event.")
        except NodeError as exc:
            outcome.error = exc
            if outcome.timed_out:
                outcome.error = NodeError("node_timeout", f"The call ran past {self.config.call_timeout:g} s.")
        finally:
            events.close()

    def _usage_of(self, client: NodeClient, call: wire.LLMRequest, reservation: Reservation,
                  outcome: "_Outcome") -> tuple[Usage | None, bool]:
        """The call's tokens, and whether the gateway estimated them: the node's counts where it reported them;
        where it did not, the gateway's own count (the node's tokenizer, else an upper bound, see README). None
        (unknown) only when the node generated nothing the gateway saw."""
        reported = outcome.completion.usage if outcome.completion is not None else None
        if reported is not None and reported.known:
            return reported, False
        if outcome.completion is None and not outcome.pieces:
            return None, False
        text = outcome.completion.text if outcome.completion is not None else "".join(outcome.pieces)
        prompt = reported.prompt_tokens if reported is not None else None
        if prompt is None:
            prompt = reservation.prompt_tokens if reservation.prompt_exact else self._prompt_count(client, call)
        if prompt is None:
            prompt = prompt_bound(call.prompt_texts())
        generated = reported.completion_tokens if reported is not None else None
        if generated is None:
            counted = client.count_text_tokens(call.model, text) if text else 0
            generated = min(reservation.max_tokens, len(text.encode("utf-8")) if counted is None else counted)
        return Usage(prompt, generated), True

    def _record(self, call: wire.LLMRequest, endpoint: str, route: ModelRoute, reservation: Reservation,
                usage: Usage | None, estimated: bool, completion: Completion | None, error: NodeError | None,
                duration_ms: int) -> None:
        try:
            record_call(
                job_id=self.job_id, model_id=call.model, node=route.node, endpoint=endpoint,
                streamed=call.stream, usage=usage, estimated=estimated, max_tokens=reservation.max_tokens,
                done_reason=completion.done_reason if completion else None, duration_ms=duration_ms,
                node_duration_ms=completion.total_duration_ms if completion else None,
                error_code=error.code if error else "", error_message=str(error) if error else "",
            )
        except Exception:
            # The meter has counted the call already; the job's totals are recomputed from the ledger at its end.
            logger.exception("job %s: could not record a %s call on the ledger", self.job_id, call.model)

    def _tell(self, kind: str, data: dict[str, Any]) -> None:
        if self.config.on_event is None:
            return
        try:
            self.config.on_event(kind, data)
        except Exception:  # events are for watching; they never fail a call
            logger.warning("job %s: event callback failed", self.job_id, exc_info=True)

    def _tell_call_end(self, described: dict[str, Any], *, usage: Usage | None, estimated: bool,
                       completion: Completion | None, error: NodeError | None, duration_ms: int) -> None:
        """The call's end as the ledger records it, then the totals. One at a time: the last `usage` event of
        the job is then always the latest totals, whatever order concurrent calls end in."""
        with self._events_lock:
            self._tell("llm_call", {
                "phase": "end", **described, "status": LLMCallStatus.ERROR if error else LLMCallStatus.OK,
                "errorCode": error.code if error else "",
                "promptTokens": usage.prompt_tokens if usage else None,
                "completionTokens": usage.completion_tokens if usage else None,
                "estimated": estimated, "doneReason": (completion.done_reason if completion else None) or "",
                "durationMs": duration_ms,
            })
            self._tell("usage", self.meter.snapshot())


@dataclass
class _Outcome:
    """What a forwarded call came to: the node's final answer, or an error and the text generated before it."""

    pieces: list[str] = field(default_factory=list)
    completion: Completion | None = None
    error: NodeError | None = None
    timed_out: bool = False
