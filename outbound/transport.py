"""The only code that sends events over HTTP: one POST, to the address `destinations.resolve` allowed, within
OUTBOUND_TIMEOUT_SECONDS in all, no redirects followed, the answer read only up to OUTBOUND_RESPONSE_BODY_BYTES.
Standard library only; raises our own `SendFailed`."""
import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from .destinations import check_url, resolve

READ_CHUNK = 4096


class SendFailed(Exception):
    """No answer: the connection, the time or the destination failed (`code` says which)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


class _PinnedConnection(http.client.HTTPConnection):
    """Connects to `address` (already checked), whatever `host` (kept for the Host header) resolves to now."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedTLSConnection(_PinnedConnection):
    def connect(self) -> None:
        super().connect()
        self.sock = ssl.create_default_context().wrap_socket(self.sock, server_hostname=self.host)


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float, body_cap: int) -> Answer:
    """POST `body` to `url`. Raises DestinationRefused (destinations) for a destination that is not allowed, and
    SendFailed when no whole answer came within `timeout` seconds."""
    scheme, host, port = check_url(url)
    deadline = time.monotonic() + timeout
    _, address = resolve(host, port)
    kind = _PinnedTLSConnection if scheme == "https" else _PinnedConnection
    connection = kind(host, port, address=address, timeout=timeout)
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", target, body=body, headers={**headers, "Content-Length": str(len(body))})
        response = connection.getresponse()
        kept = bytearray()
        while True:
            if time.monotonic() > deadline:
                raise SendFailed(f"no whole answer within {timeout:g} s", code="timeout")
            chunk = response.read(READ_CHUNK)
            if not chunk:
                break
            kept += chunk[:max(body_cap - len(kept), 0)]
            if len(kept) >= body_cap:  # enough kept for the log; the rest is not read
                break
        return Answer(status=response.status, body=bytes(kept))
    except TimeoutError:
        raise SendFailed(f"no answer within {timeout:g} s", code="timeout") from None
    except (OSError, http.client.HTTPException) as exc:
        raise SendFailed(f"{type(exc).__name__}: {exc}", code="connection_failed") from None
    finally:
        connection.close()
