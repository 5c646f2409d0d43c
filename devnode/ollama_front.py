"""An Ollama-compatible HTTP front for llama.cpp's OpenAI-compatible server.

llama.cpp dropped its Ollama routes, yet our platform (and the official `ollama` client) speaks Ollama's API.
This module answers the Ollama routes we need by translating each request to the llama.cpp server next to it:

    GET  /                -> "Ollama is running"
    GET  /api/version     -> {"version"}
    GET  /api/tags        -> the served model, with size, digest and details
    GET  /api/ps          -> the same model, marked loaded (llama.cpp keeps it in memory for its whole life)
    POST /api/show        -> details, model_info, template
    POST /api/generate    -> /v1/chat/completions (or /v1/completions when raw=true)
    POST /api/chat        -> /v1/chat/completions

Streaming answers are NDJSON (Ollama's default is stream=true). Token counts and durations come from
llama.cpp's own `usage` and `timings`, never from counting here.
Standard library only, plus nodeclient (itself standard library only, no Django) for the option table
and the parameter-size wording it shares with the node clients.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from devnode import gguf
from nodeclient import OLLAMA_TO_OPENAI_OPTIONS, format_parameter_size

logger = logging.getLogger(__name__)

# The Ollama API level we imitate; some clients gate features on this version.
OLLAMA_VERSION = "0.12.0"
# Generation can be slow on a shared CPU; this bounds one silent gap from llama.cpp, not the whole answer.
UPSTREAM_TIMEOUT_S = 600.0

# Ollama option name -> llama.cpp request field: the platform's options, and the sampling options llama.cpp
# accepts under Ollama's own names beside OpenAI's fields.
_OPTION_MAP = {
    **OLLAMA_TO_OPENAI_OPTIONS,
    **{name: name for name in ("min_p", "repeat_penalty", "presence_penalty", "frequency_penalty")},
}


class FrontError(Exception):
    """An error to answer as Ollama does: `{"error": message}` with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- the served model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedModel:
    """What Ollama's listing routes say about the one model the llama.cpp server holds."""

    name: str
    size: int
    digest: str
    modified_at: str
    family: str
    parameter_count: int
    quantization: str
    context_length: int  # what the model was trained for (Ollama's model_info)
    runtime_context: int  # what llama.cpp gives one request: n_ctx divided among the parallel slots
    template: str

    @property
    def parameter_size(self) -> str:
        return format_parameter_size(self.parameter_count)

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family] if self.family else None,
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization,
        }

    def tag_entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": self.modified_at,
            "size": self.size,
            "digest": self.digest,
            "details": self.details(),
        }

    def matches(self, requested: str) -> bool:
        """Ollama treats a name without a tag as `name:latest`."""
        return _with_tag(requested) == _with_tag(self.name)


def _with_tag(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def describe_model(path: Path, name: str, upstream_meta: dict[str, Any], template: str) -> ServedModel:
    """Build the listing entry from the GGUF file itself and from llama.cpp's /v1/models `meta`."""
    stat = path.stat()
    metadata = gguf.read_metadata(path, {"general.architecture"})
    return ServedModel(
        name=name,
        size=stat.st_size,
        digest=_sha256(path),
        modified_at=datetime.fromtimestamp(stat.st_mtime, UTC).isoformat().replace("+00:00", "Z"),
        family=str(metadata.get("general.architecture", "")),
        parameter_count=int(upstream_meta.get("n_params") or 0),
        quantization=str(upstream_meta.get("ftype") or ""),
        context_length=int(upstream_meta.get("n_ctx_train") or 0),
        runtime_context=int(upstream_meta.get("n_ctx") or 0),
        template=template,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- request and response translation ---------------------------------------------------------------------


def openai_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """Ollama `options` -> llama.cpp request fields; options llama.cpp cannot honour are dropped."""
    out: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if key in _OPTION_MAP and value is not None:
            out[_OPTION_MAP[key]] = value
    # Ollama's num_predict -1 (endless) and -2 (fill the context) both mean "no limit" to llama.cpp.
    if isinstance(out.get("max_tokens"), int) and out["max_tokens"] < 0:
        del out["max_tokens"]
    return out


def _response_format(fmt: Any) -> dict[str, Any] | None:
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"schema": fmt}}
    return None


def chat_request(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """An Ollama /api/chat body -> (llama.cpp path, payload). Images and tools are not supported."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise FrontError(400, "messages must be a list")
    payload: dict[str, Any] = {
        "model": body["model"],
        "messages": [{"role": m.get("role", "user"), "content": m.get("content") or ""} for m in messages],
        **openai_options(body.get("options")),
    }
    if (fmt := _response_format(body.get("format"))) is not None:
        payload["response_format"] = fmt
    return "/v1/chat/completions", payload


def generate_request(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """An Ollama /api/generate body -> (llama.cpp path, payload).

    Ollama wraps the prompt in the model's chat template unless raw=true; llama.cpp's chat route does the same
    wrapping with the template the GGUF carries, and /v1/completions takes the prompt as it is.
    """
    prompt = body.get("prompt") or ""
    if body.get("raw"):
        return "/v1/completions", {"model": body["model"], "prompt": prompt, **openai_options(body.get("options"))}
    messages = [{"role": "system", "content": body["system"]}] if body.get("system") else []
    messages.append({"role": "user", "content": prompt})
    return chat_request({**body, "messages": messages})


def final_fields(usage: dict[str, Any], timings: dict[str, Any], done_reason: str | None, started_ns: int) -> dict:
    """The closing fields of an Ollama answer, from llama.cpp's `usage` and `timings` (durations in ns).

    prompt_eval_count is usage.prompt_tokens (the whole prompt), not timings.prompt_n, which leaves out the
    tokens llama.cpp found in its prompt cache: the meter must see the full prompt.
    """
    return {
        "done": True,
        "done_reason": done_reason or "stop",
        "total_duration": time.monotonic_ns() - started_ns,
        "load_duration": 0,  # the model stays loaded for the node's whole life
        "prompt_eval_count": usage.get("prompt_tokens"),
        "prompt_eval_duration": int(float(timings.get("prompt_ms") or 0) * 1e6),
        "eval_count": usage.get("completion_tokens"),
        "eval_duration": int(float(timings.get("predicted_ms") or 0) * 1e6),
    }


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _choice_text(choice: dict[str, Any], chat: bool) -> str:
    if chat:
        part = choice.get("delta") or choice.get("message") or {}
        return part.get("content") or ""
    return choice.get("text") or ""


# --- the HTTP server ---------------------------------------------------------------------------------------


class OllamaFront(ThreadingHTTPServer):
    """Serves the Ollama routes on (host, port), forwarding generation to the llama.cpp server at upstream."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], upstream: str, model: ServedModel) -> None:
        super().__init__(address, _Handler)
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port
        self.model = model

    def handle_error(self, request: Any, client_address: Any) -> None:
        # HTTP clients with keep-alive pools (httpx in the ollama package) may reset idle connections;
        # that is normal, not worth socketserver's default traceback on stderr.
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            logger.debug("client %s reset its connection", client_address)
            return
        logger.exception("error while serving %s", client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def open_upstream(self, path: str, payload: dict[str, Any]) -> tuple[http.client.HTTPConnection, Any]:
        """POST to llama.cpp; raises FrontError (500) when it cannot be reached or refuses the request."""
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=UPSTREAM_TIMEOUT_S)
        try:
            conn.request("POST", path, json.dumps(payload), {"Content-Type": "application/json"})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise FrontError(500, f"llama.cpp server unavailable: {exc}") from exc
        if resp.status != 200:
            text = resp.read().decode("utf-8", errors="replace")
            conn.close()
            raise FrontError(resp.status if resp.status < 500 else 500, _upstream_message(text))
        return conn, resp


def _upstream_message(text: str) -> str:
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return text[:500]
    return str(error.get("message") if isinstance(error, dict) else error)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive for non-streamed answers; streams use chunked encoding
    server: OllamaFront

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        logger.debug("%s " + format, self.address_string(), *args)

    # routes

    def do_HEAD(self) -> None:
        self._send_text(200, "Ollama is running", head=True)

    def do_GET(self) -> None:
        model = self.server.model
        if self.path == "/":
            self._send_text(200, "Ollama is running")
        elif self.path == "/api/version":
            self._send_json(200, {"version": OLLAMA_VERSION})
        elif self.path == "/api/tags":
            self._send_json(200, {"models": [model.tag_entry()]})
        elif self.path == "/api/ps":
            entry = {**model.tag_entry(), "expires_at": "2318-01-01T00:00:00Z", "size_vram": 0,
                     "context_length": model.runtime_context}
            self._send_json(200, {"models": [entry]})
        else:
            self._send_text(404, "404 page not found")

    def do_POST(self) -> None:
        routes = {"/api/show": self._show, "/api/generate": self._generate, "/api/chat": self._chat}
        route = routes.get(self.path)
        if route is None:
            self._send_text(404, "404 page not found")
            return
        try:
            route(self._read_body())
        except FrontError as exc:
            self._send_json(exc.status, {"error": exc.message})
        except (BrokenPipeError, ConnectionResetError):
            logger.info("client left before the answer was complete")

    def _show(self, body: dict[str, Any]) -> None:
        model = self._model_for(body)
        self._send_json(200, {
            "modelfile": f"FROM {model.name}\n",
            "parameters": "",
            "template": model.template,
            "details": model.details(),
            "model_info": {
                "general.architecture": model.family,
                "general.parameter_count": model.parameter_count,
                f"{model.family}.context_length": model.context_length,
            },
            "capabilities": ["completion"],
            "modified_at": model.modified_at,
        })

    def _generate(self, body: dict[str, Any]) -> None:
        model = self._model_for(body)
        if not body.get("prompt") and not body.get("raw"):
            # Ollama answers an empty prompt by loading the model; ours is always loaded.
            self._send_json(200, {"model": model.name, "created_at": _now(), "response": "", "done": True,
                                  "done_reason": "load"})
            return
        path, payload = generate_request({**body, "model": model.name})
        self._answer(path, payload, body, chat=path.endswith("chat/completions"), field="response")

    def _chat(self, body: dict[str, Any]) -> None:
        model = self._model_for(body)
        path, payload = chat_request({**body, "model": model.name})
        self._answer(path, payload, body, chat=True, field="message")

    # translation of one answer

    def _answer(self, path: str, payload: dict[str, Any], body: dict[str, Any], *, chat: bool, field: str) -> None:
        started = time.monotonic_ns()
        if body.get("stream", True):
            payload.update(stream=True, stream_options={"include_usage": True})
            self._stream_answer(path, payload, chat=chat, field=field, started=started)
            return
        conn, resp = self.server.open_upstream(path, payload)
        try:
            data = json.loads(resp.read())
        except ValueError as exc:
            raise FrontError(500, "llama.cpp sent invalid JSON") from exc
        finally:
            conn.close()
        choice = (data.get("choices") or [{}])[0]
        out = {"model": payload["model"], "created_at": _now(), **self._piece(field, _choice_text(choice, chat))}
        out.update(final_fields(data.get("usage") or {}, data.get("timings") or {}, choice.get("finish_reason"),
                                started))
        self._send_json(200, out)

    def _stream_answer(self, path: str, payload: dict[str, Any], *, chat: bool, field: str, started: int) -> None:
        conn, resp = self.server.open_upstream(path, payload)
        try:
            self._start_stream()
            usage: dict[str, Any] = {}
            timings: dict[str, Any] = {}
            reason: str | None = None
            for event in _sse_events(resp):
                if "error" in event:
                    self._chunk({"error": _upstream_message(json.dumps(event))})
                    break
                # llama.cpp puts usage (and timings) in a last chunk with no choices on the chat route, and
                # in the finishing chunk itself on the completions route: take them wherever they appear.
                usage = event.get("usage") or usage
                timings = event.get("timings") or timings
                for choice in event.get("choices") or []:
                    reason = choice.get("finish_reason") or reason
                    if text := _choice_text(choice, chat):
                        self._chunk({"model": payload["model"], "created_at": _now(), **self._piece(field, text),
                                     "done": False})
            else:
                final = {"model": payload["model"], "created_at": _now(), **self._piece(field, "")}
                self._chunk({**final, **final_fields(usage, timings, reason, started)})
            self._end_stream()
        finally:
            conn.close()

    @staticmethod
    def _piece(field: str, text: str) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": text}} if field == "message" else {"response": text}

    # plumbing

    def _model_for(self, body: dict[str, Any]) -> ServedModel:
        name = body.get("model") or body.get("name") or ""
        if not self.server.model.matches(name):
            raise FrontError(404, f"model '{name}' not found")
        return self.server.model

    def _read_body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError as exc:
            raise FrontError(400, f"invalid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise FrontError(400, "the request body must be a JSON object")
        return body

    def _send_json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8")

    def _send_text(self, status: int, text: str, head: bool = False) -> None:
        self._send(status, text.encode(), "text/plain; charset=utf-8", head=head)

    def _send(self, status: int, data: bytes, content_type: str, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, obj: dict[str, Any]) -> None:
        line = json.dumps(obj).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _sse_events(resp: Any) -> Iterator[dict[str, Any]]:
    """The JSON events of an SSE stream up to `[DONE]`; llama.cpp sends one `data:` line per event."""
    for raw in resp:
        line = raw.strip()
        if line.startswith(b"error:"):  # llama.cpp's way to fail after the stream began
            yield {"error": line[6:].strip().decode("utf-8", errors="replace")}
            return
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        try:
            yield json.loads(data)
        except ValueError:
            yield {"error": "llama.cpp sent an invalid stream event"}
            return
