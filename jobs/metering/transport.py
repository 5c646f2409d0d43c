"""The job gateway's transport: a bounded HTTP/1.1 server on a Unix socket, with the peer's credentials.

It knows nothing of models or bills. It serves one `App` (the job's gateway, jobs.metering.gateway): each request
goes to `app.route(method, path)`, which answers a handler or raises `GatewayRequestError`. What it bounds itself:
the connections it may hold open (past `app.max_connections`, and all of them once `app.closing`, a connection is
refused from the accepting thread), how long a connection may stay silent (`app.socket_timeout`), and the size of a
body it reads. Handler threads are kept for the next connection.
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
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol

from django.db import connections

logger = logging.getLogger(__name__)

_REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s")


class GatewayRequestError(Exception):
    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


class App(Protocol):
    """What the transport serves: the job gateway."""

    job_id: str
    closing: bool
    max_connections: int
    socket_timeout: float
    max_body_bytes: int

    def route(self, method: str, path: str) -> Callable[["Request"], tuple[int, Any] | None]:
        """The handler of `method path`; raises GatewayRequestError (403, 404) when there is none."""


@dataclass(eq=False)
class _Waiting:
    """A handler thread waiting for its next connection, which the accepting thread hands it in `connection`."""

    thread: threading.Thread
    wake: threading.Condition
    connection: tuple[socket.socket, Any] | None = None


class SocketServer(socketserver.UnixStreamServer):
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
    app: App

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
        app = self.app
        waiting = None
        with self.idle:
            refuse = app.closing or self.active >= app.max_connections
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
            self._refuse(request, "job_ended" if app.closing else "too_many_connections")
            return
        if waiting is None:
            thread = threading.Thread(target=self._handler_thread, args=(request, client_address), daemon=True,
                                      name=f"gateway-{app.job_id[:8]}-handler-{next(self._thread_numbers)}")
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
            logger.warning("job %s: gateway connections refused (%s)", self.app.job_id, code)
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


class Request(BaseHTTPRequestHandler):
    server: SocketServer
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
        self.timeout = self.server.app.socket_timeout
        super().setup()

    def _dispatch(self, method: str) -> None:
        app = self.server.app
        # One handler serves every request of a kept-alive connection: per-request state starts afresh.
        self.body_read, self.stream_started, self.listening = False, False, True
        self.after_answer: list[Callable[[], None]] = []
        self.route_path = path = self.path.split("?", 1)[0]
        try:
            answer = app.route(method, path)(self)
        except GatewayRequestError as exc:
            answer = exc.status, {"error": exc.detail, "code": exc.code}
            self.close_connection = True
            self._discard_body(app.max_body_bytes)
        except Exception:
            logger.exception("job %s: gateway failed on %s %s", app.job_id, method, path)
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
            raise GatewayRequestError(400, "malformed_json",
                                      "The body is not valid JSON (or nests too deep).") from None

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
        logger.debug("job %s gateway: " + format, self.server.app.job_id, *args)



def peer_uid(connection: socket.socket) -> int | None:
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

