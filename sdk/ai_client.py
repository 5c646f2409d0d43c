"""Call the job's language model from a script. Standard library only; nothing to install.

    import ai_client
    text = ai_client.generate("Say hi", options={"temperature": 0})
    reply = ai_client.chat([{"role": "user", "content": "Hi"}])
    for piece in ai_client.generate("Count to 5", stream=True):
        print(piece, end="")
    print(ai_client.usage())          # the job's tokens so far, as the gateway metered them

Inside a job, AI_ENDPOINT points at the job's gateway (a Unix socket) and LLM_MODEL names the job's model.
Outside a job, set AI_ENDPOINT to an Ollama-compatible node (http://127.0.0.1:11435) to develop a script locally.
Options may be given as keywords (temperature=0, max_tokens=50) or as Ollama's `options={...}`.
"""
import http.client
import json
import os
import random
import time
from collections.abc import Iterator
from typing import Any

from transport import DEFAULT_SOCKET, connect

__all__ = ["AIClientError", "BudgetExhausted", "ModelNotAllowed", "chat", "generate", "list_models", "usage"]

DEFAULT_TIMEOUT = float(os.environ.get("AI_CLIENT_TIMEOUT", "120"))
RETRIES = int(os.environ.get("AI_CLIENT_RETRIES", "3"))
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_OPTION_NAMES = {"max_tokens": "num_predict", "num_predict": "num_predict", "temperature": "temperature",
                 "seed": "seed", "top_p": "top_p", "top_k": "top_k", "stop": "stop"}


class AIClientError(Exception):
    """A model call failed. `code` is the gateway's error code (e.g. model_not_allowed), `status` its HTTP status."""

    def __init__(self, message: str, *, code: str = "error", status: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status


class BudgetExhausted(AIClientError):
    """The job's token budget is spent."""


class ModelNotAllowed(AIClientError):
    """The job may not use the model it asked for."""


_ERRORS = {"budget_exhausted": BudgetExhausted, "model_not_allowed": ModelNotAllowed}


def _endpoint() -> str:
    return os.environ.get("AI_ENDPOINT") or f"unix://{DEFAULT_SOCKET}"


def _model(model: str | None) -> str:
    chosen = model or os.environ.get("LLM_MODEL")
    if not chosen:
        raise AIClientError("No model given and LLM_MODEL is not set.", code="no_model")
    return chosen


def _options(options: dict[str, Any] | None, extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(options or {})
    for name, value in extra.items():
        if name not in _OPTION_NAMES:
            raise TypeError(f"unknown option {name!r}; known: {', '.join(sorted(_OPTION_NAMES))}")
        merged[_OPTION_NAMES[name]] = value
    return merged


def _error(status: int, body: bytes) -> AIClientError:
    try:
        data = json.loads(body)
        message, code = str(data.get("error") or data.get("detail") or body[:500]), str(data.get("code") or "error")
    except (ValueError, AttributeError):
        message, code = body[:500].decode("utf-8", errors="replace"), "error"
    return _ERRORS.get(code, AIClientError)(message, code=code, status=status)


def _request(method: str, path: str, body: dict[str, Any] | None, *, timeout: float,
             stream: bool = False) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Send with retries (backoff with jitter) on connection errors, 429 and 5xx; POSTs too, since the gateway
    refuses a call before the node starts it or meters whatever the node did. A call that was sent and then
    timed out is not sent again (it may still be running on the node): it raises code `timeout`."""
    data = None if body is None else json.dumps(body).encode()
    last_error: AIClientError | None = None
    for attempt in range(RETRIES + 1):
        if attempt:
            time.sleep(min(8.0, 0.25 * 2 ** (attempt - 1)) * (0.5 + random.random()))
        connection, prefix = connect(_endpoint(), timeout)
        try:
            connection.connect()
        except OSError as exc:
            connection.close()
            last_error = AIClientError(f"Cannot reach the model gateway at {_endpoint()}: {exc}", code="unreachable")
            continue
        try:
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            connection.request(method, prefix + path, data, headers)
            response = connection.getresponse()
        except TimeoutError:
            connection.close()
            # The call was sent and may be running on the node: sending it again could bill it twice.
            raise AIClientError(f"The model gateway did not answer within {timeout} s.", code="timeout") from None
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            last_error = AIClientError(f"Cannot reach the model gateway at {_endpoint()}: {exc}", code="unreachable")
            continue
        if response.status < 400:
            return connection, response
        error = _error(response.status, response.read())
        connection.close()
        if response.status not in RETRY_STATUSES:
            raise error
        last_error = error
    assert last_error is not None
    raise last_error


def _json(method: str, path: str, body: dict[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT) -> Any:
    connection, response = _request(method, path, body, timeout=timeout)
    try:
        return json.loads(response.read())
    except ValueError as exc:
        raise AIClientError(f"The gateway sent invalid JSON: {exc}", code="bad_response") from None
    except TimeoutError:
        raise AIClientError(f"The answer stopped for {timeout} s.", code="timeout") from None
    except (OSError, http.client.HTTPException) as exc:
        raise AIClientError(f"The answer broke off: {exc}", code="unreachable") from None
    finally:
        connection.close()


def _lines(path: str, body: dict[str, Any], timeout: float) -> Iterator[dict[str, Any]]:
    connection, response = _request("POST", path, body, timeout=timeout, stream=True)
    try:
        while True:
            try:
                line = response.readline()
                event = json.loads(line) if line.strip() else None
            except TimeoutError:
                raise AIClientError(f"The stream was silent for {timeout} s.", code="timeout") from None
            except (OSError, http.client.HTTPException) as exc:
                raise AIClientError(f"The stream broke: {exc}", code="unreachable") from None
            except ValueError:
                raise AIClientError("The gateway sent an invalid stream line.", code="bad_response") from None
            if not line:
                raise AIClientError("The stream ended before its last event.", code="bad_response")
            if event is None:
                continue
            if "error" in event:
                raise _error(502, line)
            yield event
            if event.get("done"):
                return
    finally:
        connection.close()


def generate(prompt: str, model: str | None = None, *, stream: bool = False, system: str | None = None,
             raw: bool = False, options: dict[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT,
             **option_keywords: Any) -> str | Iterator[str]:
    """The model's completion of `prompt` as text; with stream=True, an iterator of text pieces. As with Ollama,
    the prompt goes through the model's chat template (after `system` when given) unless `raw` is true."""
    body: dict[str, Any] = {"model": _model(model), "prompt": prompt, "stream": stream,
                            "options": _options(options, option_keywords)}
    if system is not None:
        body["system"] = system
    if raw:
        body["raw"] = True
    if stream:
        return (event.get("response", "") for event in _lines("/api/generate", body, timeout))
    return _json("POST", "/api/generate", body, timeout).get("response", "")


def chat(messages: list[dict[str, str]], model: str | None = None, *, stream: bool = False,
         options: dict[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT,
         **option_keywords: Any) -> str | Iterator[str]:
    """The model's reply to `messages` ([{"role": "user", "content": "..."}]) as text, or an iterator of pieces."""
    body = {"model": _model(model), "messages": messages, "stream": stream,
            "options": _options(options, option_keywords)}
    if stream:
        return ((event.get("message") or {}).get("content", "") for event in _lines("/api/chat", body, timeout))
    return (_json("POST", "/api/chat", body, timeout).get("message") or {}).get("content", "")


def usage() -> dict[str, Any]:
    """The job's metered totals so far: promptTokens, completionTokens, totalTokens, llmCalls, remainingTokens."""
    return _json("GET", "/_job/usage", timeout=10)


def list_models() -> list[str]:
    """The models this job may use."""
    return [entry.get("name") or entry.get("model") for entry in _json("GET", "/api/tags", timeout=10)["models"]]
