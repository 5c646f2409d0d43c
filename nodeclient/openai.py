"""`OpenAIClient`: any OpenAI-compatible server such as llama.cpp's or vLLM's (`/v1/models`, `/v1/chat/completions`,
`/v1/completions`, SSE streaming with `stream_options.include_usage`, and the node's tokenizer where it has one).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from nodeclient.base import Completion, NodeClient, NodeModel, TextOf, Usage, format_parameter_size, int_or_none
from nodeclient.connections import Cancellation
from nodeclient.errors import NodeError
from nodeclient.options import check_options

# Counting tokens is a quick question; a node slow to answer it is treated as one without a tokenizer.
TOKENIZE_TIMEOUT = 5.0


class OpenAIClient(NodeClient):
    kind = "openai"

    def __init__(self, url: str, timeout: float, *, keep_alive: int = 0) -> None:
        super().__init__(url, timeout, keep_alive=keep_alive)
        # Names this node serves (ids and aliases), learnt from /v1/models. llama.cpp answers a request for
        # any model name with the one model it holds, so we check the name ourselves before each call.
        self._known: frozenset[str] = frozenset()

    def _model_entries(self) -> list[dict[str, Any]]:
        data = self._json("GET", "/v1/models").get("data")
        if not isinstance(data, list):
            raise NodeError("node_bad_response", f"{self.url}/v1/models has no data list")
        entries = [e for e in data if isinstance(e, dict) and isinstance(e.get("id"), str)]
        self._known = frozenset(e["id"] for e in entries) | {a for e in entries for a in e.get("aliases") or []}
        return entries

    def list_models(self) -> list[NodeModel]:
        models = []
        for entry in self._model_entries():
            meta = entry.get("meta") or {}  # llama.cpp's extension; vLLM gives none of this
            n_params = int_or_none(meta.get("n_params"))
            status = entry.get("status")  # llama.cpp's router mode says which models are in memory
            models.append(NodeModel(
                id=entry["id"],
                name=entry["id"],
                size=int_or_none(meta.get("size")),
                family="",
                parameter_size=format_parameter_size(n_params) if n_params else "",
                quantization=str(meta.get("ftype") or ""),
                loaded=status.get("value") == "loaded" if isinstance(status, dict) else True,
            ))
        return models

    def _require_model(self, model: str) -> None:
        if model in self._known:
            return
        self._model_entries()  # the node may have gained the model since we last looked
        if model not in self._known:
            raise NodeError("model_not_found", f"model '{model}' not found on {self.url}", 404)

    def generate(self, model: str, prompt: str, *, system: str | None = None, raw: bool = False,
                 **options: Any) -> Completion:
        if not raw:  # templated, as Ollama's /api/generate: a chat of one user message
            return self.chat(model, _generate_messages(prompt, system), **options)
        payload = self._payload(model, options, prompt=prompt)
        self._require_model(model)
        data = self._json("POST", "/v1/completions", payload)
        return self._completion(data, lambda choice: choice.get("text"), model)

    def chat(self, model: str, messages: list[dict[str, Any]], **options: Any) -> Completion:
        payload = self._payload(model, options, messages=messages)
        self._require_model(model)
        data = self._json("POST", "/v1/chat/completions", payload)
        return self._completion(data, lambda choice: (choice.get("message") or {}).get("content"), model)

    def stream_generate(self, model: str, prompt: str, *, system: str | None = None, raw: bool = False,
                        cancel: Cancellation | None = None, **options: Any) -> Iterator[str | Completion]:
        if not raw:
            yield from self.stream_chat(model, _generate_messages(prompt, system), cancel=cancel, **options)
            return
        payload = self._payload(model, options, prompt=prompt, stream=True)
        self._require_model(model)
        yield from self._stream("/v1/completions", payload, lambda choice: choice.get("text"), cancel)

    def stream_chat(self, model: str, messages: list[dict[str, Any]], *, cancel: Cancellation | None = None,
                    **options: Any) -> Iterator[str | Completion]:
        payload = self._payload(model, options, messages=messages, stream=True)
        self._require_model(model)
        yield from self._stream("/v1/chat/completions", payload, lambda c: (c.get("delta") or {}).get("content"),
                                cancel)

    # llama.cpp: POST /apply-template {"messages"} -> {"prompt"}, POST /tokenize {"content"} -> {"tokens"}.
    # vLLM: POST /tokenize {"model", "prompt" | "messages"} -> {"count", "tokens"}. One body serves both.
    def count_prompt_tokens(self, model: str, *, prompt: str | None = None,
                            messages: list[dict[str, Any]] | None = None, system: str | None = None,
                            raw: bool = False) -> int | None:
        if prompt is not None and raw:
            return self._tokenize(model, prompt, add_special=True)
        chat = messages if prompt is None else _generate_messages(prompt, system)
        try:
            templated = self._json("POST", "/apply-template", {"messages": chat}, timeout=TOKENIZE_TIMEOUT)
        except NodeError as exc:
            if exc.status not in (404, 405, 501):
                return None
            return self._count({"model": model, "messages": chat})  # vLLM templates the messages itself
        text = templated.get("prompt")
        return self._tokenize(model, text, add_special=True) if isinstance(text, str) else None

    def count_text_tokens(self, model: str, text: str) -> int | None:
        return self._tokenize(model, text, add_special=False)

    def _tokenize(self, model: str, text: str, *, add_special: bool) -> int | None:
        return self._count({"model": model, "content": text, "prompt": text, "add_special": add_special,
                            "add_special_tokens": add_special, "parse_special": True})

    def _count(self, body: dict[str, Any]) -> int | None:
        try:
            data = self._json("POST", "/tokenize", body, timeout=TOKENIZE_TIMEOUT)
        except NodeError:
            return None
        count, tokens = data.get("count"), data.get("tokens")
        if isinstance(count, int) and not isinstance(count, bool):
            return count
        return len(tokens) if isinstance(tokens, list) else None

    def health(self) -> bool:
        for path in ("/health", "/v1/models"):  # not every OpenAI-compatible server has /health
            try:
                self._open("GET", path)[0].close()
                return True
            except NodeError as exc:
                if exc.code != "node_http_error":
                    return False
        return False

    @staticmethod
    def _payload(model: str, options: dict[str, Any], stream: bool = False, **fields: Any) -> dict[str, Any]:
        payload = {"model": model, **fields, **check_options(options)}
        if stream:
            # Without include_usage an OpenAI stream carries no token counts at all, and we bill by them.
            payload.update(stream=True, stream_options={"include_usage": True})
        return payload

    def _stream(self, path: str, payload: dict[str, Any], text_of: TextOf,
                cancel: Cancellation | None = None) -> Iterator[str | Completion]:
        pieces: list[str] = []
        last: dict[str, Any] = {}
        finish: str | None = None
        usage: dict[str, Any] | None = None
        lines = self._lines(path, payload, cancel)
        try:
            for line in lines:
                if line.startswith(b"error:"):  # llama.cpp's way to fail after the stream began
                    raise self._status_error(None, line[6:].decode("utf-8", errors="replace"), path)
                if not line.startswith(b"data:"):
                    continue  # SSE comments and keep-alive pings
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                event = self._stream_event(data, path, "SSE event")
                last = event
                # Usage arrives in a last event with no choices on llama.cpp's chat route, and inside the
                # finishing event on its completions route: take it wherever it appears.
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
                    if text := text_of(choice):
                        pieces.append(text)
                        yield text
            lines.finish()  # after [DONE], or at the body's end for a node that does not send it
        finally:
            lines.close()
        if not last or (finish is None and usage is None):
            raise NodeError("node_bad_response", f"{self.url}{path} ended the stream before finishing")
        final = {**last, "usage": usage} if usage else last
        yield self._completion_from(final, "".join(pieces), finish, payload["model"])

    def _completion(self, data: dict[str, Any], text_of: TextOf, model: str) -> Completion:
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise NodeError("node_bad_response", f"{self.url} sent an answer without choices")
        text = text_of(choices[0])
        if text is None:
            text = ""  # a model may legitimately answer nothing (an immediate end of sequence)
        if not isinstance(text, str):
            raise NodeError("node_bad_response", f"{self.url} sent an answer without text")
        return self._completion_from(data, text, choices[0].get("finish_reason"), model)

    @staticmethod
    def _completion_from(data: dict[str, Any], text: str, finish: str | None, model: str) -> Completion:
        usage = data.get("usage") or {}
        timings = data.get("timings") or {}  # llama.cpp's extension: how long the prompt and generation took
        total_ms = None
        if "prompt_ms" in timings or "predicted_ms" in timings:
            total_ms = float(timings.get("prompt_ms") or 0) + float(timings.get("predicted_ms") or 0)
        return Completion(
            text=text,
            model=data.get("model") or model,
            usage=Usage(int_or_none(usage.get("prompt_tokens")), int_or_none(usage.get("completion_tokens"))),
            done_reason=finish,
            total_duration_ms=total_ms,
            raw=data,
        )


def _generate_messages(prompt: str, system: str | None) -> list[dict[str, str]]:
    """A templated generate as a chat: what Ollama's /api/generate does with the model's template."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": prompt}]
