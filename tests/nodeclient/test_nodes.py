"""nodeclient against a real AI node (llama.cpp via xllamacpp, plus its Ollama front) and against
tiny local servers that misbehave on purpose. No Django needed.

A 135M model is terse and odd: the tests assert shapes, token counts and done reasons, never words.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import ollama
import pytest

from nodeclient import Completion, NodeClient, NodeError, client_for
from tests.fixtures.ai_node import AINode
from tests.support.ports import free_port

KINDS = ("openai", "ollama")
DETERMINISTIC = {"temperature": 0, "seed": 42, "max_tokens": 8}
HELLO = [{"role": "user", "content": "Say hello."}]
PROMPT = "The sky is"


def _url(node: AINode, kind: str) -> str:
    return node.openai_url if kind == "openai" else node.ollama_url


@pytest.fixture(params=KINDS)
def client(request: pytest.FixtureRequest, ai_node: AINode) -> NodeClient:
    return client_for(request.param, _url(ai_node, request.param), timeout=30)


def _raw_counts(completion: Completion) -> tuple[Any, Any]:
    """The token counts exactly as the node wrote them in its own answer."""
    raw = completion.raw
    if "usage" in raw:
        return raw["usage"]["prompt_tokens"], raw["usage"]["completion_tokens"]
    return raw["prompt_eval_count"], raw["eval_count"]


def _assert_metered(completion: Completion, max_tokens: int = 8) -> None:
    usage = completion.usage
    assert isinstance(usage.prompt_tokens, int) and usage.prompt_tokens > 0
    assert isinstance(usage.completion_tokens, int) and 0 < usage.completion_tokens <= max_tokens
    assert (usage.prompt_tokens, usage.completion_tokens) == _raw_counts(completion)
    assert completion.done_reason in ("stop", "length")
    assert isinstance(completion.text, str)
    assert completion.total_duration_ms is not None and completion.total_duration_ms > 0


def _drain(stream: Iterator[str | Completion]) -> tuple[list[str], Completion]:
    items = list(stream)
    *pieces, final = items
    assert all(isinstance(p, str) for p in pieces)
    assert isinstance(final, Completion)
    return pieces, final


# --- against the real node ------------------------------------------------------------------------------------


class TestRealNode:
    def test_it_lists_the_served_model(self, client: NodeClient, ai_node: AINode) -> None:
        models = {m.id: m for m in client.list_models()}
        model = models[ai_node.model_id]
        assert model.parameter_size == "135M"
        assert model.quantization == "Q4_1"
        assert model.size and model.size > 50_000_000
        assert model.loaded is True

    def test_it_reports_health(self, client: NodeClient) -> None:
        assert client.health() is True

    def test_generate_meters_the_tokens_the_node_reports(self, client: NodeClient, ai_node: AINode) -> None:
        completion = client.generate(ai_node.model_id, PROMPT, **DETERMINISTIC)
        _assert_metered(completion)
        assert completion.model == ai_node.model_id

    def test_chat_meters_the_tokens_the_node_reports(self, client: NodeClient, ai_node: AINode) -> None:
        completion = client.chat(ai_node.model_id, HELLO, **DETERMINISTIC)
        _assert_metered(completion)

    def test_max_tokens_caps_the_answer(self, client: NodeClient, ai_node: AINode) -> None:
        completion = client.chat(ai_node.model_id, HELLO, temperature=0, seed=42, max_tokens=2)
        assert completion.usage.completion_tokens == 2
        assert completion.done_reason == "length"

    def test_stream_chat_yields_text_then_a_metered_completion(self, client: NodeClient, ai_node: AINode) -> None:
        pieces, final = _drain(client.stream_chat(ai_node.model_id, HELLO, **DETERMINISTIC))
        assert pieces, "a stream of up to 8 tokens should carry some text"
        assert "".join(pieces) == final.text
        _assert_metered(final)
        # The same prompt costs the same prompt tokens, streamed or not.
        assert final.usage.prompt_tokens == client.chat(ai_node.model_id, HELLO, **DETERMINISTIC).usage.prompt_tokens

    def test_stream_generate_yields_text_then_a_metered_completion(self, client: NodeClient, ai_node: AINode) -> None:
        pieces, final = _drain(client.stream_generate(ai_node.model_id, PROMPT, **DETERMINISTIC))
        assert "".join(pieces) == final.text
        _assert_metered(final)

    def test_a_stream_can_be_abandoned_midway(self, client: NodeClient, ai_node: AINode) -> None:
        stream = client.stream_chat(ai_node.model_id, HELLO, temperature=0, seed=42, max_tokens=64)
        assert isinstance(next(stream), str)
        stream.close()  # closes the connection; the node stays usable
        assert client.chat(ai_node.model_id, HELLO, **DETERMINISTIC).usage.completion_tokens

    @pytest.mark.parametrize("call", ["generate", "chat", "stream_chat", "stream_generate"])
    def test_it_rejects_an_unknown_model(self, client: NodeClient, call: str) -> None:
        argument: Any = HELLO if "chat" in call else PROMPT
        with pytest.raises(NodeError) as caught:
            result = getattr(client, call)("no-such-model:1b", argument, max_tokens=4)
            list(result) if call.startswith("stream") else None
        assert caught.value.code == "model_not_found"

    def test_it_refuses_options_outside_the_common_vocabulary(self, client: NodeClient, ai_node: AINode) -> None:
        with pytest.raises(ValueError):
            client.chat(ai_node.model_id, HELLO, num_predict=4)

    def test_both_apis_count_the_same_prompt_alike(self, ai_node: AINode) -> None:
        # The Ollama front goes through llama.cpp's chat template too, so the prompt costs the same.
        openai = client_for("openai", ai_node.openai_url, 30).chat(ai_node.model_id, HELLO, **DETERMINISTIC)
        ollama_ = client_for("ollama", ai_node.ollama_url, 30).chat(ai_node.model_id, HELLO, **DETERMINISTIC)
        assert openai.usage.prompt_tokens == ollama_.usage.prompt_tokens


class TestOllamaFrontWithTheOfficialClient:
    @pytest.fixture
    def official(self, ai_node: AINode) -> ollama.Client:
        return ollama.Client(host=ai_node.ollama_url, timeout=30)

    OPTIONS = {"temperature": 0, "seed": 42, "num_predict": 8}

    def test_it_lists_shows_and_reports_the_loaded_model(self, official: ollama.Client, ai_node: AINode) -> None:
        listed = {m.model: m for m in official.list().models}
        model = listed[ai_node.model_id]
        assert model.details is not None and model.details.parameter_size == "135M"
        assert model.details.quantization_level == "Q4_1" and model.details.format == "gguf"
        assert model.digest and model.size and model.modified_at is not None
        shown = official.show(ai_node.model_id)
        assert shown.details is not None and shown.details.family == "llama"
        assert shown.modelinfo and shown.modelinfo["general.parameter_count"] > 100_000_000
        assert shown.template
        assert [m.model for m in official.ps().models] == [ai_node.model_id]

    def test_generate_answers_with_ollama_counts(self, official: ollama.Client, ai_node: AINode) -> None:
        answer = official.generate(model=ai_node.model_id, prompt=PROMPT, options=self.OPTIONS, stream=False)
        assert answer.done is True and answer.done_reason in ("stop", "length")
        assert isinstance(answer.response, str)
        assert answer.prompt_eval_count and answer.prompt_eval_count > 0
        assert answer.eval_count and 0 < answer.eval_count <= 8
        assert answer.total_duration and answer.eval_duration and answer.prompt_eval_duration

    def test_generate_streams_by_default_and_ends_with_counts(self, official: ollama.Client, ai_node: AINode) -> None:
        parts = list(official.generate(model=ai_node.model_id, prompt=PROMPT, options=self.OPTIONS, stream=True))
        assert all(p.done is False for p in parts[:-1]) and parts[-1].done is True
        assert parts[-1].prompt_eval_count and parts[-1].eval_count and parts[-1].eval_count <= 8

    def test_chat_answers_with_and_without_streaming(self, official: ollama.Client, ai_node: AINode) -> None:
        answer = official.chat(model=ai_node.model_id, messages=HELLO, options=self.OPTIONS)
        assert answer.message.role == "assistant" and isinstance(answer.message.content, str)
        assert answer.prompt_eval_count and answer.eval_count
        parts = list(official.chat(model=ai_node.model_id, messages=HELLO, options=self.OPTIONS, stream=True))
        assert parts[-1].done is True and parts[-1].eval_count and parts[-1].prompt_eval_count
        assert parts[-1].prompt_eval_count == answer.prompt_eval_count

    def test_num_predict_caps_the_answer(self, official: ollama.Client, ai_node: AINode) -> None:
        answer = official.chat(model=ai_node.model_id, messages=HELLO, options={"num_predict": 3, "temperature": 0})
        assert answer.eval_count == 3 and answer.done_reason == "length"

    def test_an_unknown_model_is_a_404_like_ollamas(self, official: ollama.Client) -> None:
        with pytest.raises(ollama.ResponseError) as caught:
            official.chat(model="no-such-model:1b", messages=HELLO)
        assert caught.value.status_code == 404
        assert caught.value.error == "model 'no-such-model:1b' not found"

    def test_the_root_says_ollama_is_running(self, ai_node: AINode) -> None:
        import urllib.request

        with urllib.request.urlopen(ai_node.ollama_url + "/", timeout=5) as resp:
            assert resp.read() == b"Ollama is running"
        with urllib.request.urlopen(ai_node.ollama_url + "/api/version", timeout=5) as resp:
            assert json.loads(resp.read())["version"]


# --- against nodes that misbehave ---------------------------------------------------------------------------


@pytest.fixture
def silent_node() -> Iterator[str]:
    """Accepts connections and never answers: the hung node."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


class _Canned(BaseHTTPRequestHandler):
    """Answers every request with the server's canned (status, content type, body, stall seconds)."""

    server: Any

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.requests.append((self.path, json.loads(self.rfile.read(length) or b"null")))
        status, content_type, body, stall = self.server.canned
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) + 1000 * bool(stall)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        time.sleep(stall)  # headers sent, body promised but never finished: a node that hangs mid-answer

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def canned_node() -> Iterator[ThreadingHTTPServer]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    server.daemon_threads = True
    server.canned = (200, "application/json", b"{}", 0)
    server.requests = []
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("kind", KINDS)
class TestMisbehavingNodes:
    def test_a_node_that_is_down_is_unreachable_at_once(self, kind: str) -> None:
        client = client_for(kind, f"http://127.0.0.1:{free_port()}", timeout=5)
        started = time.monotonic()
        with pytest.raises(NodeError) as caught:
            client.list_models()
        assert caught.value.code == "node_unreachable"
        assert time.monotonic() - started < 1.0
        assert client.health() is False

    def test_a_node_that_hangs_times_out(self, kind: str, silent_node: str) -> None:
        client = client_for(kind, silent_node, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(NodeError) as caught:
            client.chat("m", HELLO)
        assert caught.value.code == "node_timeout"
        assert 0.4 < time.monotonic() - started < 0.5 + 1.5

    def test_a_node_that_hangs_mid_answer_times_out(self, kind: str, canned_node: Any) -> None:
        canned_node.canned = (200, "application/json", b'{"models": [', 3)
        client = client_for(kind, canned_node.url, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(NodeError) as caught:
            client.list_models()
        assert caught.value.code == "node_timeout"
        assert time.monotonic() - started < 0.5 + 1.5

    def test_garbage_is_a_bad_response(self, kind: str, canned_node: Any) -> None:
        canned_node.canned = (200, "application/json", b"<html>surprise</html>", 0)
        client = client_for(kind, canned_node.url, timeout=5)
        for call in (client.list_models, lambda: client.generate("m", PROMPT),
                     lambda: list(client.stream_generate("m", PROMPT))):
            with pytest.raises(NodeError) as caught:
                call()
            assert caught.value.code == "node_bad_response"

    def test_a_server_error_is_an_http_error_with_its_status(self, kind: str, canned_node: Any) -> None:
        canned_node.canned = (500, "application/json", b'{"error": "out of memory"}', 0)
        client = client_for(kind, canned_node.url, timeout=5)
        with pytest.raises(NodeError) as caught:
            client.list_models()
        assert (caught.value.code, caught.value.status) == ("node_http_error", 500)
        assert "out of memory" in str(caught.value)

    def test_a_404_about_the_model_is_model_not_found(self, kind: str, canned_node: Any) -> None:
        # What Ollama and vLLM answer for a model they do not have.
        body = (b'{"error": "model \'x\' not found"}' if kind == "ollama"
                else b'{"error": {"message": "The model `x` does not exist.", "code": 404}}')
        canned_node.canned = (404, "application/json", body, 0)
        with pytest.raises(NodeError) as caught:
            client_for(kind, canned_node.url, timeout=5).list_models()
        assert caught.value.code == "model_not_found"


class TestOptionMapping:
    def test_ollama_gets_its_own_option_names(self, canned_node: Any) -> None:
        canned_node.canned = (200, "application/json", json.dumps(
            {"model": "m", "response": "x", "done": True, "done_reason": "stop", "prompt_eval_count": 3,
             "eval_count": 1, "total_duration": 2_000_000}).encode(), 0)
        completion = client_for("ollama", canned_node.url, 5).generate(
            "m", PROMPT, max_tokens=8, temperature=0, seed=42, top_p=0.9, stop=["\n"])
        path, body = canned_node.requests[-1]
        assert path == "/api/generate"
        assert body["stream"] is False
        assert body["options"] == {"num_predict": 8, "temperature": 0, "seed": 42, "top_p": 0.9, "stop": ["\n"]}
        assert completion.total_duration_ms == 2.0

    def test_openai_gets_top_level_fields_and_asks_for_usage_in_streams(self, canned_node: Any) -> None:
        canned_node.canned = (200, "application/json", json.dumps({"data": [{"id": "m"}]}).encode(), 0)
        client = client_for("openai", canned_node.url, 5)
        client.list_models()  # learn the node's models, so that the stream goes straight to the call
        canned_node.canned = (200, "text/event-stream", b'data: {"choices": [{"delta": {"content": "hi"}, '
                              b'"finish_reason": "stop"}], "usage": {"prompt_tokens": 4, "completion_tokens": 1}}'
                              b"\n\ndata: [DONE]\n\n", 0)
        pieces, final = _drain(client.stream_chat("m", HELLO, max_tokens=8, temperature=0, seed=42))
        path, body = canned_node.requests[-1]
        assert path == "/v1/chat/completions"
        assert body["max_tokens"] == 8 and body["seed"] == 42 and body["temperature"] == 0
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        assert pieces == ["hi"] and (final.usage.prompt_tokens, final.usage.completion_tokens) == (4, 1)

    def test_an_unknown_kind_is_refused(self) -> None:
        with pytest.raises(ValueError):
            client_for("triton", "http://127.0.0.1:1", 1)
