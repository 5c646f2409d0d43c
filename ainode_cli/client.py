"""The API over HTTP: JSON in, JSON out, errors as ApiError with the API's own `code`. Standard library only."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

USER_AGENT = "ainode-cli/1.0"
# A connection that fails, a 5xx and a 429 (after its Retry-After) are tried again, as many times as there are
# pauses; only requests that are safe to repeat are (GETs, and POSTs that carry an Idempotency-Key).
RETRY_PAUSES = (0.5, 1.0, 2.0)
MAX_RETRY_AFTER = 60.0


class _KeyStaysHome(urllib.request.HTTPRedirectHandler):
    """Follows a redirect on the same host (an http -> https upgrade, say) with the key; to another host, without
    it: urllib would otherwise send the Authorization header wherever a redirect points."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).hostname != urllib.parse.urlsplit(req.full_url).hostname:
            new.remove_header("Authorization")
        return new


_opener = urllib.request.build_opener(_KeyStaysHome)


class ApiError(Exception):
    """The API answered an error: its HTTP status, and the `detail` and `code` of its body."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None):
        body = body if isinstance(body, dict) else {"detail": str(body or ""), "code": "error"}
        super().__init__(body.get("detail") or f"HTTP {status}")
        self.status = status
        self.code = str(body.get("code") or "error")
        self.detail = str(body.get("detail") or f"HTTP {status}")
        self.body = body
        self.headers = headers or {}


class Unreachable(Exception):
    """The API could not be reached (connection refused, DNS, timeout)."""


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class Client:
    def __init__(self, url: str, key: str, *, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout

    def get(self, path: str, **query: Any) -> Answer:
        params = {name: value for name, value in query.items() if value is not None}
        if params:
            path = f"{path}?{urllib.parse.urlencode(params)}"
        return self.request("GET", path, retry=True)

    def post(self, path: str, body: Any = None, *, headers: dict[str, str] | None = None) -> Answer:
        headers = headers or {}
        return self.request("POST", path, body, headers=headers, retry="Idempotency-Key" in headers)

    def patch(self, path: str, body: Any) -> Answer:
        return self.request("PATCH", path, body)

    def request(self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
                retry: bool = False) -> Answer:
        """One request; raises ApiError for an error answer, Unreachable when the server cannot be reached."""
        data = json.dumps(body).encode() if body is not None else None
        all_headers = {"Authorization": f"Bearer {self.key}", "Accept": "application/json", "User-Agent": USER_AGENT,
                       **({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})}
        pauses = list(RETRY_PAUSES) if retry else []
        while True:
            request = urllib.request.Request(self.url + path, data=data, method=method, headers=all_headers)
            try:
                with _opener.open(request, timeout=self.timeout) as response:
                    return Answer(response.status, _decode(response.read()), dict(response.headers))
            except urllib.error.HTTPError as error:
                answer = Answer(error.code, _decode(error.read()), dict(error.headers))
                if (error.code >= 500 or error.code == 429) and pauses:
                    # Over the rate limit: wait as long as the API asks (bounded), as for a server's hiccup.
                    time.sleep(min(_retry_after(answer.headers), MAX_RETRY_AFTER) if error.code == 429
                               else pauses[0])
                    pauses.pop(0)
                    continue
                raise ApiError(answer.status, answer.body, answer.headers) from None
            except (urllib.error.URLError, OSError) as error:
                if pauses:
                    time.sleep(pauses.pop(0))
                    continue
                reason = getattr(error, "reason", error)
                raise Unreachable(f"cannot reach {self.url}: {reason}") from None

    def pages(self, path: str, *, limit: int | None = None, **query: Any) -> list[dict[str, Any]]:
        """Every item of a paginated list (at most `limit`), following the pages."""
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            body = self.get(path, page=page, page_size=100, **query).body
            items += body["results"]
            if not body.get("next") or (limit is not None and len(items) >= limit):
                return items[:limit] if limit is not None else items
            page += 1


def _retry_after(headers: dict[str, str]) -> float:
    try:
        return max(float(headers.get("Retry-After", "1")), 0.0)
    except ValueError:
        return 1.0


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace")
