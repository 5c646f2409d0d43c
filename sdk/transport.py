"""HTTP to the job gateway over its Unix socket (or to a plain http:// URL outside a container).

Standard library only: this file is mounted into the job container, which has nothing installed.
"""
import http.client
import socket
import urllib.parse

DEFAULT_SOCKET = "/run/ainode/gateway.sock"


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float):
        super().__init__("gateway", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def connect(endpoint: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """A connection for `endpoint` (`unix:///path/to.sock` or `http://host:port/base`) and its path prefix."""
    parsed = urllib.parse.urlsplit(endpoint)
    if parsed.scheme == "unix":
        return UnixHTTPConnection(parsed.path or DEFAULT_SOCKET, timeout), ""
    if parsed.scheme == "https":
        return http.client.HTTPSConnection(parsed.netloc, timeout=timeout), parsed.path.rstrip("/")
    if parsed.scheme == "http":
        return http.client.HTTPConnection(parsed.netloc, timeout=timeout), parsed.path.rstrip("/")
    raise ValueError(f"unsupported endpoint {endpoint!r}: use unix:///path or http://host:port")
