"""Sockets in front of AI nodes, all on 127.0.0.1: a listening socket served by a thread of the test, and a TCP relay
to a real node that a test can take down mid-way (and bring back on the same port)."""
from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from tests.support.containers import pump


class Listener:
    """A listening socket served by a daemon thread; `close()` stops it and drops every connection."""

    def __init__(self, handle: Callable[[socket.socket], None], port: int = 0) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self.accepted = 0  # connections accepted so far
        self._handle = handle
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            self.accepted += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        # A thread blocked in accept() keeps a closed socket listening; shutting it down first wakes it.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.drop_connections()

    def drop_connections(self) -> None:
        """Close every connection open now; new ones are still accepted unless closed."""
        connections, self.connections = self.connections, []
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


class Relay:
    """A TCP relay to a real node: the node as seen on another port, which `stop()` takes down mid-test. A relay
    started on the `port` of a stopped one is that node coming back."""

    def __init__(self, upstream_url: str, port: int = 0) -> None:
        host, upstream_port = upstream_url.removeprefix("http://").rstrip("/").split(":")
        self._upstream = (host, int(upstream_port))
        self._listener = Listener(self._relay, port)
        self.url = self._listener.url

    def _relay(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._upstream, timeout=10)
        except OSError:
            conn.close()
            return
        upstream.settimeout(None)
        self._listener.connections.append(upstream)
        threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()
        pump(conn, upstream)

    @property
    def accepted(self) -> int:
        """Connections made to the node through the relay."""
        return self._listener.accepted

    def drop_connections(self) -> None:
        """Close the connections open now, as a node closes the idle ones it keeps alive; the relay stays up."""
        self._listener.drop_connections()

    def stop(self) -> None:
        self._listener.close()
