"""The two model APIs the gateway speaks to job scripts: Ollama's and OpenAI's.

`parse_request` turns either API's request into one `LLMRequest`; the render functions turn the node's answer
(whatever its kind) back into the API the script used. So any client library a script brings is metered the same.
"""
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from nodeclient import OLLAMA_TO_OPENAI_OPTIONS, Completion

OLLAMA, OPENAI = "ollama", "openai"
GENERATE, CHAT = "generate", "chat"

# The routes a script may call, and what each one is.
ROUTES: dict[str, tuple[str, str]] = {
    "/api/generate": (OLLAMA, GENERATE),
    "/api/chat": (OLLAMA, CHAT),
    "/v1/completions": (OPENAI, GENERATE),
    "/v1/chat/completions": (OPENAI, CHAT),
}
# Node management that a job must never reach, whatever the node's kind.
FORBIDDEN_ROUTES = frozenset({"/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", "/api/blobs"})

# The roles both APIs define; short words that the per-message template allowance of the budget covers.
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


class WireError(ValueError):
    """The request is not a valid call of the API it was sent to."""

    code = "invalid_request"


class OptionError(WireError):
    """An option has the wrong type or is out of bounds."""

    code = "invalid_option"


# Bounds of the sampling options, whatever the API: the node would refuse or misread anything outside them.
STOP_MAX_SEQUENCES = 16
STOP_MAX_CHARS = 256
NUMBER_OPTIONS = {"temperature": (0.0, 100.0), "top_p": (0.0, 1.0)}
INTEGER_OPTIONS = {"max_tokens": (-1, 10 ** 9), "top_k": (0, 1_000_000), "seed": (-(2 ** 63), 2 ** 64 - 1)}


@dataclass
class LLMRequest:
    api: str
    op: str
    model: str
    stream: bool
    prompt: str = ""
    messages: list[dict[str, str]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    include_usage: bool = False
    system: str | None = None  # a generate's system prompt (Ollama's /api/generate `system`)
    raw: bool = False  # a generate without the chat template: /v1/completions, or /api/generate with raw=true

    def prompt_texts(self) -> list[str]:
        if self.op == CHAT:
            return [m["content"] for m in self.messages]
        return [self.prompt] if self.raw or not self.system else [self.system, self.prompt]


def parse_request(route: str, body: Any, *, default_model: str) -> LLMRequest:
    api, op = ROUTES[route]
    if not isinstance(body, dict):
        raise WireError("The body must be a JSON object.")
    model = body.get("model") or default_model
    if not isinstance(model, str):
        raise WireError("model must be a string.")
    request = LLMRequest(api=api, op=op, model=model, stream=bool(body.get("stream", api == OLLAMA)))
    if op == GENERATE:
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and len(prompt) == 1:  # OpenAI allows a list of prompts; one is all we serve
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise WireError("prompt must be a string.")
        request.prompt = prompt
        # OpenAI's completions are raw; Ollama's generate applies the model's template unless asked not to.
        request.raw = api == OPENAI or _flag(body, "raw")
        system = body.get("system") if api == OLLAMA else None
        if system is not None and not isinstance(system, str):
            raise WireError("system must be a string.")
        request.system = system or None
    else:
        request.messages = _messages(body.get("messages"))
    if api == OLLAMA:
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise WireError("options must be an object.")
        request.options = {ours: options[theirs] for theirs, ours in OLLAMA_TO_OPENAI_OPTIONS.items()
                           if theirs in options}
    else:
        request.options = {name: body[name] for name in OLLAMA_TO_OPENAI_OPTIONS.values()
                           if body.get(name) is not None}
        if body.get("max_completion_tokens") is not None:
            request.options["max_tokens"] = body["max_completion_tokens"]
        stream_options = body.get("stream_options") or {}
        if not isinstance(stream_options, dict):
            raise WireError("stream_options must be an object.")
        request.include_usage = bool(stream_options.get("include_usage"))
    _check_options(request.options)
    if request.options.get("max_tokens") is not None and request.options["max_tokens"] < 1:
        request.options.pop("max_tokens")  # Ollama's -1 means "no limit": the gateway's cap applies
    return request


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise WireError(f"{name} must be true or false.")
    return value


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_options(options: dict[str, Any]) -> None:
    """Types and sizes of the options forwarded to the node; raises OptionError."""
    for name, value in options.items():
        if value is None:
            continue
        if name in INTEGER_OPTIONS:
            low, high = INTEGER_OPTIONS[name]
            if not _is_integer(value) or not low <= value <= high:
                raise OptionError(f"{name} must be an integer from {low} to {high}.")
        elif name in NUMBER_OPTIONS:
            low, high = NUMBER_OPTIONS[name]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
                raise OptionError(f"{name} must be a number from {low:g} to {high:g}.")
        elif name == "stop":
            stops = [value] if isinstance(value, str) else value
            if (not isinstance(stops, list) or len(stops) > STOP_MAX_SEQUENCES
                    or not all(isinstance(s, str) and 0 < len(s) <= STOP_MAX_CHARS for s in stops)):
                raise OptionError(f"stop must be a string or a list of at most {STOP_MAX_SEQUENCES} strings of "
                                  f"1 to {STOP_MAX_CHARS} characters.")


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise WireError("messages must be a non-empty list.")
    messages = []
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise WireError("each message needs a role and a content.")
        if message["role"] not in ROLES:
            # The chat template writes the role into the prompt: a free-form role would be prompt text that the
            # budget's bound (which counts contents) does not see.
            raise WireError(f"a message's role must be one of {', '.join(sorted(ROLES))}.")
        content = message.get("content", "")
        if isinstance(content, list):  # OpenAI's content parts: keep the text parts
            texts = [p.get("text", "") for p in content if isinstance(p, dict)]
            if not all(isinstance(text, str) for text in texts):
                raise WireError("a content part's text must be a string.")
            content = "".join(texts)
        if content is None:
            content = ""  # OpenAI allows an assistant message without content
        if not isinstance(content, str):
            raise WireError("message content must be text.")
        messages.append({"role": message["role"], "content": content})
    return messages


# --- rendering ------------------------------------------------------------------------------------------------

def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def _openai_usage(completion: Completion) -> dict[str, int | None]:
    prompt, generated = completion.usage.prompt_tokens, completion.usage.completion_tokens
    total = None if prompt is None or generated is None else prompt + generated
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": total}


def _ollama_final(request: LLMRequest, completion: Completion, text: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": request.model, "created_at": _now_iso()}
    if request.op == GENERATE:
        body["response"] = text
    else:
        body["message"] = {"role": "assistant", "content": text}
    ns = None if completion.total_duration_ms is None else int(completion.total_duration_ms * 1e6)
    body.update(done=True, done_reason=_ollama_reason(completion.done_reason), total_duration=ns,
                prompt_eval_count=completion.usage.prompt_tokens, eval_count=completion.usage.completion_tokens)
    return body


def _ollama_reason(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def render(request: LLMRequest, completion: Completion) -> dict[str, Any]:
    """A whole (non-streamed) answer in the API the script called."""
    if request.api == OLLAMA:
        return _ollama_final(request, completion, completion.text)
    finish = "length" if completion.done_reason == "length" else "stop"
    base = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": request.model,
            "usage": _openai_usage(completion)}
    if request.op == GENERATE:
        return {**base, "object": "text_completion",
                "choices": [{"index": 0, "text": completion.text, "finish_reason": finish, "logprobs": None}]}
    return {**base, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                         "finish_reason": finish}]}


class StreamRenderer:
    """Frames of a streamed answer in the API the script called: NDJSON for Ollama, SSE for OpenAI."""

    content_type: str

    def __init__(self, request: LLMRequest):
        self.request = request
        self.content_type = "application/x-ndjson" if request.api == OLLAMA else "text/event-stream"
        self._id = f"cmpl-{uuid.uuid4().hex[:24]}"
        self._created = int(time.time())

    def chunk(self, text: str) -> bytes:
        request = self.request
        if request.api == OLLAMA:
            body: dict[str, Any] = {"model": request.model, "created_at": _now_iso(), "done": False}
            if request.op == GENERATE:
                body["response"] = text
            else:
                body["message"] = {"role": "assistant", "content": text}
            return json.dumps(body).encode() + b"\n"
        choice = {"index": 0, "finish_reason": None}
        choice.update({"text": text} if request.op == GENERATE else {"delta": {"content": text}})
        return self._sse(self._event([choice]))

    def final(self, completion: Completion) -> bytes:
        request = self.request
        if request.api == OLLAMA:
            return json.dumps(_ollama_final(request, completion, "")).encode() + b"\n"
        finish = "length" if completion.done_reason == "length" else "stop"
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        choice.update({"text": ""} if request.op == GENERATE else {"delta": {}})
        frames = self._sse(self._event([choice]))
        if request.include_usage:
            frames += self._sse({**self._event([]), "usage": _openai_usage(completion)})
        return frames + b"data: [DONE]\n\n"

    def error(self, code: str, message: str) -> bytes:
        if self.request.api == OLLAMA:
            return json.dumps({"error": message, "code": code}).encode() + b"\n"
        return self._sse({"error": {"message": message, "code": code}})

    def _event(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        kind = "text_completion" if self.request.op == GENERATE else "chat.completion.chunk"
        return {"id": self._id, "object": kind, "created": self._created, "model": self.request.model,
                "choices": choices}

    @staticmethod
    def _sse(event: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(event).encode() + b"\n\n"


def ollama_tags(models: list[str]) -> dict[str, Any]:
    return {"models": [{"name": m, "model": m, "modified_at": _now_iso(), "size": 0, "digest": "",
                        "details": {}} for m in models]}


def openai_models(models: list[str]) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "infra-ainode"}
                                       for m in models]}
