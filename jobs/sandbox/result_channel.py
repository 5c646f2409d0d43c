"""The result channel: how the runtime inside a job's container reports the script's end (`POST /_job/result` on
the job's socket, served beside the model routes by the job's gateway).

Only a process of the container's user may report (the socket's peer credentials), once, with a JSON object no
larger than the job's result limit. What it reports was written inside the container, so the script may have
written it: the runner believes none of it blindly (jobs.collect).
"""
import threading
from dataclasses import dataclass
from typing import Any

from ..metering.transport import GatewayRequestError, Request, peer_uid
from .runtime_user import RUNTIME_UID

RESULT_ROUTE = ("POST", "/_job/result")


@dataclass
class ResultReport:
    """What the runtime inside the container reported about the script's end."""

    received: bool = False
    result: Any = None
    error: dict[str, Any] | None = None
    peak_memory_bytes: int | None = None
    rejected_code: str = ""


class ResultChannel:
    """Takes one job's report; `report` holds what arrived."""

    def __init__(self, *, result_limit: int):
        self.result_limit = result_limit
        self.report = ResultReport()
        self._lock = threading.Lock()

    def post(self, request: Request) -> tuple[int, dict[str, Any]]:
        if peer_uid(request.connection) != RUNTIME_UID:
            raise GatewayRequestError(403, "not_the_job", "Only the job's own container may report its result.")
        try:
            body = request.read_json(self.result_limit)
        except GatewayRequestError as exc:
            if exc.code == "body_too_large":
                self.report.rejected_code = "result_too_large"
            raise
        if not isinstance(body, dict):
            raise GatewayRequestError(400, "malformed_result", "The result report must be a JSON object.")
        with self._lock:
            if self.report.received:
                raise GatewayRequestError(409, "result_already_reported", "The result was already reported.")
            self.report.received = True
            self.report.result = body.get("result")
            error = body.get("error")
            self.report.error = error if isinstance(error, dict) else None
            peak = body.get("peakMemoryBytes")
            self.report.peak_memory_bytes = peak if isinstance(peak, int) and peak > 0 else None
        return 200, {"ok": True}
