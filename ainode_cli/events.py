"""Follow a job's live events (`GET /api/v1/jobs/{id}/events`): a Server-Sent Events reader, standard library only.

    for event in follow_job("http://127.0.0.1:8000", job_id, api_key=key):
        if event.event == "stdout":
            print(event.data["text"], end="")

`follow_job` reconnects after a dropped connection with the last id it saw (`Last-Event-ID`), so nothing is lost
or repeated, and stops after the `result` event. `parse_events` is the SSE parser alone. `Progress` keeps the
status line a follower shows (the admin's job page shows the same): status, elapsed time, calls, tokens.
"""
from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

RESULT = "result"


@dataclass(frozen=True)
class ServerEvent:
    """One event: its id (None when the server gave none), its kind and its data (decoded JSON)."""

    id: str | None
    event: str
    data: Any


class EventStreamError(Exception):
    """The server refused the stream (`status` and its JSON error body), or it kept failing."""

    def __init__(self, message: str, *, status: int | None = None, body: Any = None):
        super().__init__(message)
        self.status, self.body = status, body


def parse_events(lines: Iterable[bytes]) -> Iterator[ServerEvent]:
    """Events from the lines of an SSE body (comments and `retry:` skipped; multi-line data joined)."""
    event_id: str | None = None
    kind, data = "message", []
    for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                text = "\n".join(data)
                yield ServerEvent(event_id, kind, json.loads(text) if text else None)
            event_id, kind, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            event_id = value
        elif name == "event":
            kind = value
        elif name == "data":
            data.append(value)


def open_stream(base_url: str, job_id: str, *, api_key: str, last_event_id: str | None = None,
                timeout: float = 60.0) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Connect to one job's event stream; raises EventStreamError when the server answers anything but 200."""
    url = urlsplit(base_url)
    connection_class = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(url.hostname, url.port, timeout=timeout)
    headers = {"Authorization": f"Bearer {api_key}", "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    connection.request("GET", f"{url.path.rstrip('/')}/api/v1/jobs/{job_id}/events", headers=headers)
    response = connection.getresponse()
    if response.status != 200:
        body = response.read()
        connection.close()
        try:
            detail = json.loads(body)
        except ValueError:
            detail = body.decode(errors="replace")
        raise EventStreamError(f"the server answered {response.status}: {detail}", status=response.status,
                               body=detail)
    return connection, response


def follow_job(base_url: str, job_id: str, *, api_key: str, last_event_id: str | None = None,
               timeout: float = 60.0, reconnects: int = 5, retry_seconds: float = 1.0) -> Iterator[ServerEvent]:
    """The job's events from `last_event_id` (the start when None) to its `result` event, across reconnects.

    `timeout` bounds a silent connection (the server sends a keep-alive comment every 15 s by default); after a
    drop it reconnects up to `reconnects` times in a row. Raises EventStreamError when the server refuses."""
    failures = 0
    while True:
        try:
            connection, response = open_stream(base_url, job_id, api_key=api_key, last_event_id=last_event_id,
                                               timeout=timeout)
        except OSError as exc:
            failures += 1
            if failures > reconnects:
                raise EventStreamError(f"cannot reach {base_url}: {exc}") from exc
            time.sleep(retry_seconds)
            continue
        try:
            for event in parse_events(iter(response.readline, b"")):
                failures = 0
                if event.id is not None:
                    last_event_id = event.id
                yield event
                if event.event == RESULT:
                    return
        except OSError:
            pass  # dropped half way: resume after the last id
        finally:
            connection.close()
        failures += 1
        if failures > reconnects:
            raise EventStreamError(f"the stream of job {job_id} kept dropping")
        time.sleep(retry_seconds)


@dataclass
class Progress:
    """What a follower shows on its status line; feed it every event with `update`."""

    status: str = ""
    started: float | None = None  # time.monotonic() when the job was seen running
    calls: int = 0
    calls_running: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    remaining_tokens: int | None = None
    finished: dict[str, Any] = field(default_factory=dict)

    def update(self, event: ServerEvent, now: float | None = None) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        if event.event == "status":
            self.status = data.get("status", self.status)
            if self.status == "running" and self.started is None:
                self.started = time.monotonic() if now is None else now
        elif event.event == "llm_call":
            # A call's `receipt` comes after its `end`, once its ledger row is written: it changes nothing here.
            self.calls_running += {"start": 1, "end": -1}.get(data.get("phase"), 0)
        elif event.event == "usage":
            self.calls = data.get("llmCalls", self.calls)
            self.prompt_tokens = data.get("promptTokens", self.prompt_tokens)
            self.completion_tokens = data.get("completionTokens", self.completion_tokens)
            self.remaining_tokens = data.get("remainingTokens")
        elif event.event == RESULT:
            self.finished = data
            self.status = data.get("status", self.status)

    def line(self, now: float | None = None) -> str:
        """E.g. "running · 3.2 s · 1 call(s) (1 running) · 37 prompt + 12 completion tokens · 951 tokens left"."""
        parts = [self.status or "waiting"]
        if self.finished.get("durationMs") is not None:
            parts.append(f"{self.finished['durationMs'] / 1000:.1f} s")
        elif self.started is not None:
            parts.append(f"{(time.monotonic() if now is None else now) - self.started:.1f} s")
        running = f" ({self.calls_running} running)" if self.calls_running else ""
        parts.append(f"{self.calls} call(s){running}")
        parts.append(f"{self.prompt_tokens} prompt + {self.completion_tokens} completion tokens")
        if self.remaining_tokens is not None:
            parts.append(f"{self.remaining_tokens} tokens left")
        return " \u00b7 ".join(parts)
