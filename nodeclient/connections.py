"""The connections of a node client: the cancellation of a call in flight (from any thread), and the idle
connections a client keeps alive between calls."""

from __future__ import annotations

import http.client
import select
import socket
import threading

from nodeclient.errors import NodeError

_Connection = http.client.HTTPConnection


class Cancellation:
    """Stops one call in flight from any thread: `cancel()` shuts the call's connection to the node.

    The thread reading the answer then gets a NodeError `call_cancelled`. A call started after `cancel()` is
    refused before it is sent.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # The sockets themselves: http.client hands a streamed answer's socket over to the response object, so
        # the connection object may no longer hold it.
        self._sockets: set[socket.socket] = set()
        self.reason = ""
        # Whether the call got as far as a connection to the node (it was sent, or was being sent): a call
        # cancelled after that was the node's to work on.
        self.reached_node = False

    @property
    def cancelled(self) -> bool:
        return bool(self.reason)

    def cancel(self, reason: str) -> None:
        with self._lock:
            if self.reason:
                return
            self.reason = reason
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def error(self) -> NodeError:
        return NodeError("call_cancelled", f"The call was cancelled: {self.reason}.")

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            if self.reason:
                raise self.error()
            self._sockets.add(sock)
            self.reached_node = True

    def detach(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sockets.discard(sock)  # type: ignore[arg-type]


# How a kept-alive connection fails when the node closed it while it sat idle (llama.cpp closes idle connections
# after a few seconds): the request was never read, so it is sent again on a fresh connection. A timeout is not
# among them: a call that was read and is slow to answer may be running.
_CLOSED_WHILE_IDLE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, http.client.RemoteDisconnected)


def _idle_and_open(sock: socket.socket | None) -> bool:
    """True when a kept-alive connection can carry a request: open, and with nothing to read (an idle connection
    that is readable was closed by the node, or holds bytes that no request asked for)."""
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    try:
        return not poller.poll(0)
    except OSError:
        return False


class _KeptAlive:
    """The idle connections to one node that a client keeps between calls: at most `size`, each used by one call
    at a time. Thread-safe: the gateway's request threads share one client per node."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def take(self) -> _Connection | None:
        """The most recently used idle connection that is still open, or None."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn = self._idle.pop()
            if _idle_and_open(conn.sock):
                return conn
            conn.close()

    def give_back(self, conn: _Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close the idle connections; connections given back later are closed too."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

