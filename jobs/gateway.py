"""The per-job gateway: an HTTP server on a Unix socket, the job container's only door to the outside.

The worker starts one for each job and mounts its folder into the container. The runtime posts the job's result
here; the model routes (metering) are served here too. Everything a request body may hold is bounded, and a
request the gateway does not know gets 404, so a hostile script learns nothing and reaches nothing else.
"""
import json
import logging
import os
import socketserver
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

logger = logging.getLogger(__name__)

SOCKET_NAME = "gateway.sock"


@dataclass
class ResultReport:
    """What the runtime inside the container reported about the script's end."""

    received: bool = False
    result: Any = None
    error: dict[str, Any] | None = None
    peak_memory_bytes: int | None = None
    rejected_code: str = ""


class GatewayRequestError(Exception):
    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    gateway: "JobGateway"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "infra-ainode-gateway"
    sys_version = ""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        gateway = self.server.gateway
        try:
            route = gateway.routes.get((method, self.path.split("?", 1)[0]))
            if route is None:
                raise GatewayRequestError(404, "not_found", f"No route {method} {self.path}.")
            status, body = route(self)
        except GatewayRequestError as exc:
            status, body = exc.status, {"error": exc.detail, "code": exc.code}
            self.close_connection = True
        self.send_json(status, body)

    def read_json(self, limit: int) -> Any:
        """The request's JSON body; refuses bodies over `limit` bytes before reading them."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise GatewayRequestError(411, "length_required", "Content-Length is required.") from None
        if length < 0 or length > limit:
            raise GatewayRequestError(413, "body_too_large", f"Body larger than {limit} bytes.")
        try:
            return json.loads(self.rfile.read(length))
        except (ValueError, UnicodeDecodeError):
            raise GatewayRequestError(400, "malformed_json", "The body is not valid JSON.") from None

    def send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def address_string(self) -> str:
        return "job-container"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("job %s gateway: " + format, self.server.gateway.job_id, *args)


class JobGateway:
    """Serves one job. `start()` binds the socket; `stop()` closes it; `report` holds the posted result."""

    def __init__(self, *, job_id: str, socket_dir: str, result_limit: int):
        self.job_id = job_id
        self.socket_path = os.path.join(socket_dir, SOCKET_NAME)
        self.result_limit = result_limit
        self.report = ResultReport()
        self._lock = threading.Lock()
        self.routes = {("POST", "/_job/result"): self._post_result}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "JobGateway":
        self._server = _Server(self.socket_path, _Handler)
        self._server.gateway = self
        # The container runs as an unprivileged user that must be able to connect.
        os.chmod(self.socket_path, 0o666)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name=f"gateway-{self.job_id}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass

    def _post_result(self, request: _Handler) -> tuple[int, dict[str, Any]]:
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
