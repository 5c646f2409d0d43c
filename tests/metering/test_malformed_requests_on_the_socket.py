"""What http.server itself refuses before a request reaches the gateway's routes (an over-long request line or
header line, too many headers, a request line that is not HTTP, a method it does not know) is answered with its
error status in full, and the connection's handler thread goes on to serve the next connection.

The gateway here serves no model (its own routes are enough): no node, no container, no database.
"""
from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.metering.gateway import GatewayConfig, JobGateway
from tests.support.waiting import wait_for


@pytest.fixture
def gateway(short_tmp: Path) -> Iterator[JobGateway]:
    config = GatewayConfig(job_id=str(uuid.uuid4()), default_model="m", max_connections=2, socket_timeout=5)
    started = JobGateway(config, socket_dir=str(short_tmp)).start()
    yield started
    started.stop(drain_timeout=1)


def exchange(gateway: JobGateway, request: bytes) -> bytes:
    """Everything the gateway answers to `request` on a connection of its own, until it hangs up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(gateway.socket_path)
        try:
            sock.sendall(request)
        except BrokenPipeError:
            pass  # it answered and hung up before reading all of it
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    wait_for(lambda: gateway._server.active == 0, timeout=5, message="the gateway to be done with the connection")
    return data


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


USAGE = b"GET /_job/usage HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n"


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
    (USAGE + b"X-Long: " + b"b" * 70000 + b"\r\n\r\n", 431),
    (USAGE + b"".join(b"X-%d: 1\r\n" % n for n in range(101)) + b"\r\n", 431),
    (b"BREW /_job/usage HTTP/1.1\r\nHost: gateway\r\n\r\n", 501),
    (b"GET /_job/usage HTTP/2.0\r\n\r\n", 505),
    (b"NOT HTTP AT ALL\r\n\r\n", 400),
], ids=["request_line_too_long", "header_line_too_long", "too_many_headers", "unknown_method", "unknown_version",
        "not_http"])
def test_a_malformed_request_gets_its_error_in_full_and_the_thread_serves_on(gateway, request_bytes, status):
    answer = exchange(gateway, request_bytes)

    # (http.server answers a request line it could not read as HTTP/1.x in HTTP/0.9's way: the page alone.)
    assert b"Error code: %d" % status in answer
    assert answer.endswith(b"</html>\n")  # the whole error page, not just the head
    assert status_of(exchange(gateway, USAGE + b"\r\n")) == 200


def test_a_request_with_many_headers_under_the_limit_is_served(gateway):
    answer = exchange(gateway, USAGE + b"".join(b"X-%d: 1\r\n" % n for n in range(90)) + b"\r\n")

    assert status_of(answer) == 200 and answer.endswith(b"}")
