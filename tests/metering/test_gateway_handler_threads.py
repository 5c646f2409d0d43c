"""A gateway serves its connections on handler threads that it keeps: a thread done with a connection serves the
next one, so a call does not pay for starting a thread. The pool grows only up to the job's cap on connections
(the connection past it is still refused from the accepting thread), a connection that a script keeps silent holds
only its own thread, and `stop` leaves no thread behind.

The gateway here serves no model (its own routes are enough): no node, no container, no database.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.metering.gateway import GatewayConfig, JobGateway
from sdk.transport import UnixHTTPConnection
from tests.support.waiting import wait_for

CAP = 4


@pytest.fixture
def gateway(short_tmp: Path) -> Iterator[JobGateway]:
    config = GatewayConfig(job_id=str(uuid.uuid4()), default_model="m", max_connections=CAP, socket_timeout=5)
    started = JobGateway(config, socket_dir=str(short_tmp)).start()
    yield started
    started.stop(drain_timeout=1)


def threads_of(gateway: JobGateway) -> list[threading.Thread]:
    """The gateway's handler threads alive now (its accepting thread, `gateway-<job id>`, is not one)."""
    prefix = f"gateway-{gateway.job_id[:8]}-handler-"
    return [thread for thread in threading.enumerate() if thread.name.startswith(prefix) and thread.is_alive()]


def usage(gateway: JobGateway) -> int:
    """One request on a connection of its own, as the SDK makes them: the answer's status."""
    connection = UnixHTTPConnection(gateway.socket_path, 5)
    try:
        connection.request("GET", "/_job/usage")
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def served_all(gateway: JobGateway) -> None:
    wait_for(lambda: gateway._server.active == 0, timeout=5, message="the gateway to be done with its connections")


def silent_connection(gateway: JobGateway, sent: bytes = b"") -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(gateway.socket_path)
    if sent:
        sock.sendall(sent)
    return sock


def answer_of(sock: socket.socket) -> tuple[int, dict]:
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_one_handler_thread_serves_connection_after_connection(gateway):
    for _ in range(20):
        assert usage(gateway) == 200
        served_all(gateway)  # as a script that waits between calls: the thread is back before the next one

    assert len(threads_of(gateway)) == 1


def test_connections_at_once_start_threads_up_to_the_cap_and_no_more(gateway):
    statuses: list[int | str] = []

    def calls() -> None:
        for _ in range(25):
            try:
                statuses.append(usage(gateway))
            except (OSError, http.client.HTTPException):
                statuses.append("hung up")  # refused while still sending its request

    callers = [threading.Thread(target=calls) for _ in range(CAP + 2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(30)

    # Past the cap a connection is refused (503, or hung up on before its request was all sent); none is served by
    # a thread past the cap.
    assert len(statuses) == (CAP + 2) * 25 and set(statuses) <= {200, 503, "hung up"}
    assert statuses.count(200) >= 25
    assert 1 <= len(threads_of(gateway)) <= CAP


def test_the_connection_past_the_cap_is_refused_and_the_threads_serve_again_once_free(gateway):
    held = [silent_connection(gateway) for _ in range(CAP)]
    wait_for(lambda: gateway._server.active == CAP, timeout=5, message="the gateway to take the connections")

    refused = silent_connection(gateway)
    assert answer_of(refused) == (503, {"error": "The gateway refused the connection.", "code": "too_many_connections"})
    assert len(threads_of(gateway)) == CAP

    for sock in held + [refused]:
        sock.close()
    served_all(gateway)
    assert [usage(gateway) for _ in range(CAP * 2)] == [200] * (CAP * 2)
    assert len(threads_of(gateway)) == CAP  # the same threads: none was started for these


def test_a_connection_kept_silent_does_not_hold_up_the_others(gateway):
    half_head = silent_connection(gateway, b"GET /_job/usage HTTP/1.1\r\nHost: gateway\r\n")
    nothing = silent_connection(gateway)
    wait_for(lambda: gateway._server.active == 2, timeout=5, message="the gateway to take the connections")

    started = time.monotonic()
    for _ in range(10):
        assert usage(gateway) == 200
        # Done with before the next (a closed connection counts against the cap until its thread sees it closed).
        wait_for(lambda: gateway._server.active == 2, timeout=5, message="the gateway to be done with the call")
    assert time.monotonic() - started < 2  # the socket timeout (5 s) has not freed the silent two

    half_head.close()
    nothing.close()


def test_a_silent_connection_is_let_go_after_the_socket_timeout_and_its_thread_serves_again(short_tmp):
    config = GatewayConfig(job_id=str(uuid.uuid4()), default_model="m", max_connections=1, socket_timeout=0.5)
    gateway = JobGateway(config, socket_dir=str(short_tmp)).start()
    try:
        silent = silent_connection(gateway, b"GET /_job/usage HTTP/1.1\r\n")
        silent.settimeout(5)
        assert silent.recv(4096) == b""  # the gateway hung up
        served_all(gateway)

        assert usage(gateway) == 200
        assert len(threads_of(gateway)) == 1
    finally:
        gateway.stop(drain_timeout=1)


def test_stop_leaves_no_handler_thread_behind(short_tmp):
    config = GatewayConfig(job_id=str(uuid.uuid4()), default_model="m", max_connections=CAP, socket_timeout=30)
    gateway = JobGateway(config, socket_dir=str(short_tmp)).start()
    assert usage(gateway) == 200
    silent = [silent_connection(gateway, b"POST /v1/completions HTTP/1.1\r\n") for _ in range(2)]
    wait_for(lambda: gateway._server.active == 2 and len(threads_of(gateway)) >= 2, timeout=5,
             message="the gateway to serve the silent connections")

    started = time.monotonic()
    gateway.stop(drain_timeout=5)

    assert time.monotonic() - started < 3  # the silent connections were hung up on, not waited out
    assert threads_of(gateway) == []
    assert not any(thread.name == f"gateway-{gateway.job_id}" for thread in threading.enumerate())
    for sock in silent:
        sock.close()


def test_a_connection_after_stop_finds_no_gateway(short_tmp):
    config = GatewayConfig(job_id=str(uuid.uuid4()), default_model="m", max_connections=CAP)
    gateway = JobGateway(config, socket_dir=str(short_tmp)).start()
    assert usage(gateway) == 200
    gateway.stop(drain_timeout=1)

    with pytest.raises((FileNotFoundError, ConnectionRefusedError, http.client.HTTPException)):
        usage(gateway)
    assert threads_of(gateway) == []
