"""`OllamaClient`: an Ollama server (`/api/tags`, `/api/ps`, `/api/generate`, `/api/chat`, NDJSON streaming)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from nodeclient.base import Completion, NodeClient, NodeModel, TextOf, Usage, int_or_none
from nodeclient.connections import Cancellation
from nodeclient.errors import NodeError
from nodeclient.options import OPENAI_TO_OLLAMA_OPTIONS, check_options


class OllamaClient(NodeClient):
    kind = "ollama"

    def list_models(self) -> list[NodeModel]:
        tags = self._json("GET", "/api/tags").get("models")
        if not isinstance(tags, list):
            raise NodeError("node_bad_response", f"{self.url}/api/tags has no model list")
        loaded = self._loaded_names()
        models = []
        for entry in (e for e in tags if isinstance(e, dict)):
            details = entry.get("details") or {}
            model_id = entry.get("model") or entry.get("name") or ""
            models.append(NodeModel(
                id=model_id,
                name=entry.get("name") or model_id,
                size=int_or_none(entry.get("size")),
                family=details.get("family") or "",
                parameter_size=details.get("parameter_size") or "",
                quantization=details.get("quantization_level") or "",
                loaded=model_id in loaded,
            ))
        return models

    def _loaded_names(self) -> set[str]:
        # /api/ps only says which models sit in memory: a node without it still lists its models.
        try:
            running = self._json("GET", "/api/ps").get("models") or []
        except NodeError as exc:
            if exc.code != "node_http_error":
                raise
            return set()
        return {str(m.get("model") or m.get("name")) for m in running if isinstance(m, dict)}

    def generate(self, model: str, prompt: str, *, system: str | None = None, raw: bool = False,
                 **options: Any) -> Completion:
        payload = self._payload(model, options, prompt=prompt, stream=False, **_generate_fields(system, raw))
        data = self._json("POST", "/api/generate", payload)
        return self._completion(data, data.get("response"), model)

    def chat(self, model: str, messages: list[dict[str, Any]], **options: Any) -> Completion:
        data = self._json("POST", "/api/chat", self._payload(model, options, messages=messages, stream=False))
        message = data.get("message")
        # A message without content (say, only tool calls) is an empty answer; no message at all is not one.
        return self._completion(data, message.get("content") or "" if isinstance(message, dict) else None, model)

    def stream_generate(self, model: str, prompt: str, *, system: str | None = None, raw: bool = False,
                        cancel: Cancellation | None = None, **options: Any) -> Iterator[str | Completion]:
        payload = self._payload(model, options, prompt=prompt, stream=True, **_generate_fields(system, raw))
        yield from self._stream("/api/generate", payload, lambda event: event.get("response"), cancel)

    def stream_chat(self, model: str, messages: list[dict[str, Any]], *, cancel: Cancellation | None = None,
                    **options: Any) -> Iterator[str | Completion]:
        payload = self._payload(model, options, messages=messages, stream=True)
        yield from self._stream("/api/chat", payload, lambda event: (event.get("message") or {}).get("content"),
                                cancel)

    def health(self) -> bool:
        try:
            self._open("GET", "/")[0].close()
        except NodeError:
            return False
        return True

    @staticmethod
    def _payload(model: str, options: dict[str, Any], **fields: Any) -> dict[str, Any]:
        mapped = {OPENAI_TO_OLLAMA_OPTIONS[k]: v for k, v in check_options(options).items()}
        return {"model": model, **fields, "options": mapped}

    def _stream(self, path: str, payload: dict[str, Any], text_of: TextOf,
                cancel: Cancellation | None = None) -> Iterator[str | Completion]:
        pieces: list[str] = []
        lines = self._lines(path, payload, cancel)
        try:
            for line in lines:
                # Ollama reports a failure after the stream began as an {"error": ...} line.
                event = self._stream_event(line, path, "NDJSON line")
                if text := text_of(event):
                    pieces.append(text)
                    yield text
                if event.get("done"):
                    lines.finish()
                    yield self._completion(event, "".join(pieces), payload["model"])
                    return
        finally:
            lines.close()
        raise NodeError("node_bad_response", f"{self.url}{path} ended the stream before done")

    def _completion(self, data: dict[str, Any], text: Any, model: str) -> Completion:
        if not isinstance(text, str) or data.get("done") is False:
            raise NodeError("node_bad_response", f"{self.url} sent an answer without text")
        total_ns = int_or_none(data.get("total_duration"))
        return Completion(
            text=text,
            model=data.get("model") or model,
            # Some Ollama versions omit prompt_eval_count when the whole prompt came from their cache.
            usage=Usage(int_or_none(data.get("prompt_eval_count")), int_or_none(data.get("eval_count"))),
            done_reason=data.get("done_reason"),
            total_duration_ms=None if total_ns is None else total_ns / 1e6,
            raw=data,
        )


def _generate_fields(system: str | None, raw: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {"raw": True} if raw else {}
    if system:
        fields["system"] = system
    return fields
