"""What both kinds of client share: the data types of an answer, and `NodeClient`, the interface with its HTTP
plumbing (sending a request, reading a JSON answer or a stream's lines, turning every failure into a `NodeError`).
The errors are in nodeclient.errors, the cancellation and the kept-alive connections in nodeclient.connections.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from nodeclient.connections import _CLOSED_WHILE_IDLE, Cancellation, _KeptAlive
from nodeclient.errors import NodeError

logger = logging.getLogger(__name__)

# Once a stream's last event is in, the rest of its body (a chunked body's terminator, sent with that event) has
# this long to arrive; a node slower than that loses the connection instead of keeping it for the next call.
BODY_END_TIMEOUT = 0.1
_Connection = http.client.HTTPConnection
_Response = http.client.HTTPResponse
# Picks the text out of one answer, stream event or choice.
TextOf = Callable[[dict[str, Any]], Any]



@dataclass(frozen=True)
class NodeModel:
    id: str
    name: str
    size: int | None
    family: str
    parameter_size: str
    quantization: str
    loaded: bool


@dataclass(frozen=True)
class Usage:
    """Token counts as the node reported them; None when it did not report one."""

    prompt_tokens: int | None
    completion_tokens: int | None

    @property
    def known(self) -> bool:
        """Both counts reported: only then is the call metered (and billable)."""
        return self.prompt_tokens is not None and self.completion_tokens is not None


@dataclass(frozen=True)
class Completion:
    text: str
    model: str
    usage: Usage
    done_reason: str | None
    total_duration_ms: float | None  # as the node measured it; None when it does not say
    raw: dict[str, Any]  # the node's answer (for a stream, its last event)


def format_parameter_size(n_params: int) -> str:
    """134_515_008 -> "135M", 1_235_814_400 -> "1.2B", as Ollama's listings write it."""
    if n_params >= 1_000_000_000:
        return f"{n_params / 1e9:.1f}B"
    if n_params >= 1_000_000:
        return f"{round(n_params / 1e6)}M"
    return str(n_params)


class NodeClient(ABC):
    """One AI node. `timeout` (seconds) bounds the connection and every wait for bytes from the node.

    It is not a deadline for the whole answer: a stream may last longer while tokens keep coming. Calls are
    not retried here (the caller decides), but for a request on a kept-alive connection that the node had closed
    (see `_open`). Streams open the connection on the first `next()`, so their errors
    surface there. Unknown options raise ValueError (a caller's mistake, not the node's).
    """

    kind: str

    def __init__(self, url: str, timeout: float, *, keep_alive: int = 0) -> None:
        parts = urlsplit(url)
        host = parts.hostname
        if parts.scheme not in ("http", "https") or not host:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._parts = parts
        self._host: str = host
        # Off by default: a client made for one question (the catalogue's, the probes') would leave its connection
        # open for nobody. A long-lived client (the gateway's) keeps them and closes them with `close()`.
        self._kept = _KeptAlive(keep_alive) if keep_alive > 0 else None

    @abstractmethod
    def list_models(self) -> list[NodeModel]: ...

    @abstractmethod
    def generate(self, model: str, prompt: str, *, system: str | None = None, raw: bool = False,
                 **options: Any) -> Completion:
        """Complete `prompt`. Like Ollama's /api/generate, the prompt is wrapped in the model's chat template (as
        one user message, after `system` when given) unless `raw` is true."""

    @abstractmethod
    def chat(self, model: str, messages: list[dict[str, Any]], **options: Any) -> Completion: ...

    @abstractmethod
    def stream_generate(self, model: str, prompt: str, *, system: str | None = None, raw: bool = False,
                        cancel: Cancellation | None = None, **options: Any) -> Iterator[str | Completion]:
        """Yield text pieces as they come, then one final Completion carrying the whole text and usage."""

    @abstractmethod
    def stream_chat(self, model: str, messages: list[dict[str, Any]], *, cancel: Cancellation | None = None,
                    **options: Any) -> Iterator[str | Completion]:
        """Yield text pieces as they come, then one final Completion carrying the whole text and usage."""

    def count_prompt_tokens(self, model: str, *, prompt: str | None = None,
                            messages: list[dict[str, Any]] | None = None, system: str | None = None,
                            raw: bool = False) -> int | None:
        """How many prompt tokens the node will count for this call (a generate when `prompt` is given, else a
        chat), asked of its own tokenizer; None when it has none or does not answer. Never raises."""
        return None

    def count_text_tokens(self, model: str, text: str) -> int | None:
        """How many tokens `text` is for the node's tokenizer; None when it has none or does not answer."""
        return None

    @abstractmethod
    def health(self) -> bool:
        """True when the node answers its health route; never raises."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, timeout={self.timeout})"

    # --- HTTP plumbing shared by both kinds -----------------------------------------------------------------

    def _open(self, method: str, path: str, payload: dict[str, Any] | None = None, *,
              cancel: Cancellation | None = None, timeout: float | None = None) -> tuple[_Connection, _Response]:
        """Send one request; return (connection, response) once the status is known to be 2xx.

        The connection is a kept-alive one when the client holds one, else a new one. A kept-alive connection that
        the node closed while it sat idle fails before the node read the request: the request goes once more, on a
        new connection (the node never started it, so nothing is counted twice). The caller hands the connection
        to `_done` once the answer is read to its end, or to `_close`; `_close` closes the response with it (and
        detaches it from `cancel`).
        """
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        while True:
            conn = self._kept.take() if self._kept is not None else None
            reused = conn is not None
            try:
                conn = self._prepare(conn, timeout or self.timeout)
                if cancel is not None:
                    cancel.attach(conn.sock)
                conn.request(method, self._parts.path.rstrip("/") + path, body=body, headers=headers)
                resp = conn.getresponse()
                if resp.status >= 400:
                    text = resp.read(64 * 1024).decode("utf-8", errors="replace")
                    raise self._status_error(resp.status, text, path)
            except (OSError, http.client.HTTPException) as exc:
                if conn is not None:
                    self._close(conn, None, cancel)
                if cancel is not None and cancel.cancelled:
                    raise cancel.error() from exc
                if reused and isinstance(exc, _CLOSED_WHILE_IDLE):
                    continue
                raise self._transport_error(exc, path) from exc
            except NodeError:
                if conn is not None:
                    self._close(conn, None, cancel)
                raise
            return conn, resp

    def _prepare(self, conn: _Connection | None, timeout: float) -> _Connection:
        """A connected connection whose reads wait at most `timeout`: `conn` (kept alive), or a new one."""
        if conn is None:
            conn_class = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
            conn = conn_class(self._host, self._parts.port, timeout=timeout)
            conn.connect()
        conn.timeout = timeout
        conn.sock.settimeout(timeout)
        return conn

    @staticmethod
    def _close(conn: _Connection, resp: _Response | None, cancel: Cancellation | None) -> None:
        """Close the connection for good: the node sees its client gone (and stops generating)."""
        if cancel is not None:
            cancel.detach(conn.sock)
        if resp is not None:
            resp.close()  # a streamed answer's socket belongs to the response once http.client handed it over
        conn.close()

    def _done(self, conn: _Connection, resp: _Response, cancel: Cancellation | None = None) -> None:
        """The answer was read to its end: keep the connection for the next call where the node keeps it open."""
        if self._kept is None or resp.will_close or not resp.isclosed() or (cancel is not None and cancel.cancelled):
            self._close(conn, resp, cancel)
            return
        if cancel is not None:
            cancel.detach(conn.sock)
        self._kept.give_back(conn)

    def close(self) -> None:
        """Close the kept-alive connections. Calls may still be made: they open connections and keep none."""
        if self._kept is not None:
            self._kept.close()

    def _json(self, method: str, path: str, payload: dict[str, Any] | None = None, *,
              timeout: float | None = None) -> dict[str, Any]:
        conn, resp = self._open(method, path, payload, timeout=timeout)
        try:
            data = json.loads(resp.read())
        except ValueError as exc:
            self._close(conn, resp, None)
            raise NodeError("node_bad_response", f"{self.url}{path} sent invalid JSON") from exc
        except (OSError, http.client.HTTPException) as exc:
            self._close(conn, resp, None)
            raise self._transport_error(exc, path) from exc
        self._done(conn, resp)
        if not isinstance(data, dict):
            raise NodeError("node_bad_response", f"{self.url}{path} sent JSON that is not an object")
        return data

    def _lines(self, path: str, payload: dict[str, Any], cancel: Cancellation | None = None) -> "_Lines":
        """The lines of a streamed answer (see `_Lines`); the request is sent on the first `next()`."""
        return _Lines(self, path, payload, cancel)

    def _transport_error(self, exc: BaseException, path: str) -> NodeError:
        where = f"{self.url}{path}"
        # Order matters: socket.timeout is an OSError, and RemoteDisconnected is both an HTTPException and
        # a ConnectionResetError.
        if isinstance(exc, (TimeoutError, socket.timeout)):
            return NodeError("node_timeout", f"{where} did not answer within {self.timeout} s")
        if isinstance(exc, http.client.HTTPException):
            return NodeError("node_bad_response", f"{where} broke the HTTP exchange: {exc!r}")
        return NodeError("node_unreachable", f"{where} is unreachable: {exc}")

    def _stream_event(self, data: bytes, path: str, what: str) -> dict[str, Any]:
        """One event of a streamed answer, decoded; NodeError when it is not a JSON object or reports an error."""
        try:
            event = json.loads(data)
        except ValueError as exc:
            raise NodeError("node_bad_response", f"{self.url}{path} sent an invalid {what}") from exc
        if not isinstance(event, dict):
            raise NodeError("node_bad_response", f"{self.url}{path} sent an {what} that is not an object")
        if "error" in event:
            raise self._status_error(None, data.decode("utf-8", errors="replace"), path)
        return event

    def _status_error(self, status: int | None, text: str, path: str) -> NodeError:
        message = _error_message(text)
        lowered = message.lower()
        if status in (400, 404) and "model" in lowered and ("not found" in lowered or "does not exist" in lowered):
            return NodeError("model_not_found", message, status)
        how = f"answered HTTP {status}" if status else "reported an error inside its stream"
        return NodeError("node_http_error", f"{self.url}{path} {how}: {message}", status)


class _Lines:
    """The non-empty lines of one streamed answer, stripped, as the node sends them.

    The request is sent on the first `next()`. Once `cancel` is cancelled, the next line raises NodeError
    call_cancelled. The reader calls `finish()` when it has the answer's last event, so that the connection may
    carry the next call, and `close()` in any case (which closes a connection not finished, and the node stops
    generating). NodeError for every failure.
    """

    def __init__(self, client: NodeClient, path: str, payload: dict[str, Any], cancel: Cancellation | None) -> None:
        self._client, self._path, self._payload, self._cancel = client, path, payload, cancel
        self._conn: _Connection | None = None
        self._resp: _Response | None = None

    def __iter__(self) -> Iterator[bytes]:
        client, path, cancel = self._client, self._path, self._cancel
        self._conn, self._resp = client._open("POST", path, self._payload, cancel=cancel)
        while True:
            try:
                line = self._resp.readline()
            except (OSError, http.client.HTTPException) as exc:
                if cancel is not None and cancel.cancelled:
                    raise cancel.error() from exc
                raise client._transport_error(exc, path) from exc
            if cancel is not None and cancel.cancelled:
                raise cancel.error()
            if not line:
                return
            if line.strip():
                yield line.strip()

    def finish(self) -> None:
        """The last event is in: read the rest of the body (normally only its end, already sent) for at most
        BODY_END_TIMEOUT, and keep the connection if the body ended there; close it otherwise."""
        conn, resp = self._conn, self._resp
        if conn is None or resp is None or resp.will_close or self._client._kept is None:
            return  # nothing to keep: close() closes it without waiting for the body's end
        self._conn = None
        try:
            if not resp.isclosed():
                conn.sock.settimeout(BODY_END_TIMEOUT)
                if resp.read(1024).strip():  # more than the blank line that ends an event: not the end
                    raise http.client.HTTPException("bytes after the last event")
        except (OSError, http.client.HTTPException):
            self._client._close(conn, resp, self._cancel)
            return
        self._client._done(conn, resp, self._cancel)

    def close(self) -> None:
        if self._conn is not None:
            self._client._close(self._conn, self._resp, self._cancel)
            self._conn = None


def _error_message(text: str) -> str:
    """The message inside an error body: Ollama's {"error": "..."}, OpenAI's {"error": {"message": ...}}."""
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return text.strip()[:500]
    if isinstance(error, dict):
        error = error.get("message")
    return str(error or text.strip()[:500])


def int_or_none(value: Any) -> int | None:
    """A count as the node wrote it when it is an int (a bool is not one); None otherwise."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None

