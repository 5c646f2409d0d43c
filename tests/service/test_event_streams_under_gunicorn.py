"""Live event streams cannot take the web down: under gunicorn (gthread workers) a stream holds one thread, never
more than half of a worker's, and one user holds at most JOB_EVENTS_MAX_PER_USER per worker; so while one key holds
every stream it may, /healthz and another user's requests answer at once. A stream lasts as long as its job, past
WEB_TIMEOUT, and ends with the job's result."""
from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

from tests.support.jobs import deploy
from tests.support.web import get
from tests.support.workers import database_url

QUEUED_FOR_EVER = "print('nobody runs me')\n"  # no worker consumes this test's broker: the job stays queued


def _submit(base: str, account) -> str:
    function = deploy(account, QUEUED_FOR_EVER)
    account_headers = {"Authorization": f"Bearer {account.key}", "Content-Type": "application/json",
                       "x-async": "true"}
    url = urlsplit(base)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        body = json.dumps({"functionId": function["functionId"]}).encode()
        head = "".join(f"{name}: {value}\r\n" for name, value in account_headers.items())
        sock.sendall(f"POST /run HTTP/1.1\r\nHost: {url.hostname}\r\n{head}Content-Length: {len(body)}\r\n"
                     "Connection: close\r\n\r\n".encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return json.loads(answer.partition(b"\r\n\r\n")[2])["jobId"]


def _stream(base: str, account, job_id: str) -> socket.socket:
    """A connection following the job's events, read only as far as its status line."""
    url = urlsplit(base)
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    sock.sendall(f"GET /api/v1/jobs/{job_id}/events HTTP/1.1\r\nHost: {url.hostname}\r\n"
                 f"Authorization: Bearer {account.key}\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock


def _timed(call) -> tuple[float, object]:
    started = time.monotonic()
    result = call()
    return time.monotonic() - started, result


def test_one_key_holding_every_stream_it_may_leaves_the_api_and_the_probes_answering(
        transactional_db, alice, bob, served_models, gunicorn):
    workers = 2
    base = gunicorn(workers=workers, DATABASE_URL=database_url(), WEB_THREADS="4")
    job_id = _submit(base, alice)
    streams = [_stream(base, alice, job_id) for _ in range(4 * workers)]  # more than alice may hold
    try:
        time.sleep(1)  # every stream is served or refused by now
        for _ in range(3):
            seconds, (status, _) = _timed(lambda: get(base + "/healthz"))
            assert status == 200 and seconds < 1.0
            seconds, (status, _) = _timed(lambda: get(base + "/api/v1/jobs/", Authorization=f"Bearer {bob.key}"))
            assert status == 200 and seconds < 1.0
    finally:
        for stream in streams:
            stream.close()


def test_a_stream_outlives_web_timeout_and_ends_with_its_job(transactional_db, alice, served_models, gunicorn):
    base = gunicorn(workers=1, DATABASE_URL=database_url(), WEB_TIMEOUT="3", JOB_EVENTS_KEEPALIVE_SECONDS="1")
    job_id = _submit(base, alice)
    stream = _stream(base, alice, job_id)
    try:
        time.sleep(8)  # well past WEB_TIMEOUT: a sync worker would have been killed, and the stream cut
        assert alice.client.post(f"/api/v1/jobs/{job_id}/cancel/").status_code == 200
        received, deadline = b"", time.monotonic() + 30
        while b"event: result" not in received and time.monotonic() < deadline:
            chunk = stream.recv(65536)
            if not chunk:
                break
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")
        assert b"event: status" in received and b"event: result" in received
    finally:
        stream.close()
