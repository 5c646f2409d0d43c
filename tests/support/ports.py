"""Ports on 127.0.0.1 for the servers that tests and benches start, and for addresses where nothing answers."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A port on 127.0.0.1 where nothing listens: bound once by us, then let go (free a moment ago, which is good
    enough for a server started on it next, or for a client that must be refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
