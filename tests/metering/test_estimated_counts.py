"""Text delivered is never billed as zero: where the node did not report a call's counts (it died half way, it
left one out, the call ran past AI_CALL_TIMEOUT), the gateway counts them itself (the node's tokenizer where it has
one, else an upper bound) and marks the call `estimated`, in the ledger, the job's result, the API, the CSV and the
dashboard. "Unknown" stays for calls where the node generated nothing.

The node is the real one behind a tampering proxy: it forwards to the real node and records its real counts, but
can cut a stream half way (a node killed mid-answer) or drop a field from the node's answers.
"""
import csv
import http.client
import io
import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobs.models import LLMCall
from tests.metering.helpers import (
    RAW_HTTP,
    NodeAnswer,
    RecordingProxy,
    _counts,
    _ProxyHandler,
    _requested_max_tokens,
    use_node,
)

CUT_AFTER = 12  # text events the "killed" node streams before it dies
Tamper = Callable[[int, dict[str, Any]], "dict[str, Any] | str"]  # (events so far, event) -> event or "cut"


class _TamperingHandler(_ProxyHandler):
    """Relays the node's stream through `proxy.tamper`, which may rewrite an event or cut the stream there."""

    def _relay_stream(self, response: http.client.HTTPResponse, content_type: str, request: dict[str, Any]) -> None:
        proxy = self.server.proxy
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        counts, seen = None, 0
        while line := response.readline():
            sse = line.startswith(b"data:")
            payload = line[5:].strip() if sse else line.strip()
            event = json.loads(payload) if payload and payload != b"[DONE]" else None
            if isinstance(event, dict):
                counts = _counts(event) or counts
                seen += 1
                action = proxy.tamper(seen, event)
                if action == "cut":  # the node dies: its connection drops in the middle of the answer
                    self.connection.shutdown(socket.SHUT_RDWR)
                    break
                line = (b"data: " if sse else b"") + json.dumps(action).encode() + b"\n"
            try:
                self.wfile.write(line)
                self.wfile.flush()
            except OSError:
                break
        proxy.record(NodeAnswer(self.path, True, _requested_max_tokens(request), *(counts or (None, None)), 200))


def _tampering_node(settings: Any, real_node: Any, kind: str, tamper: Tamper) -> RecordingProxy:
    proxy = use_node(settings, real_node, kind)
    proxy.tamper = tamper
    proxy._server.RequestHandlerClass = _TamperingHandler
    return proxy


def _cut(seen: int, event: dict[str, Any]) -> "dict[str, Any] | str":
    return "cut" if seen > CUT_AFTER else event


def _without_prompt_count(seen: int, event: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in event.items() if key != "prompt_eval_count"}


@pytest.fixture(params=["openai", "ollama"])
def dying_node(request, transactional_db, settings, real_node) -> Iterator[RecordingProxy]:
    """The real node (as each kind), killed after streaming CUT_AFTER events of each answer."""
    proxy = _tampering_node(settings, real_node, request.param, _cut)
    yield proxy
    proxy.stop()


@pytest.fixture
def ollama_without_prompt_counts(transactional_db, settings, real_node) -> Iterator[RecordingProxy]:
    """An Ollama node that leaves prompt_eval_count out of its answers (as Ollama does for a cached prompt)."""
    proxy = _tampering_node(settings, real_node, "ollama", _without_prompt_count)
    yield proxy
    proxy.stop()


STREAM_UNTIL_IT_BREAKS = '''
import ai_client


def main(event, context):
    pieces = []
    try:
        for piece in ai_client.chat([{"role": "user", "content": "Tell me a long story about the sea."}],
                                    stream=True, max_tokens=200, temperature=0, seed=42):
            pieces.append(piece)
        error = None
    except ai_client.AIClientError as exc:
        error = {"code": exc.code, "message": str(exc)}
    return {"pieces": pieces, "error": error, "usage": ai_client.usage()}
'''


def test_a_stream_whose_node_dies_half_way_is_billed_with_estimated_counts(run_script, dying_node):
    job = run_script(STREAM_UNTIL_IT_BREAKS)

    assert job.status == "succeeded", job.stderr
    delivered = "".join(job.result["pieces"])
    assert delivered and job.result["error"]["code"] == "node_bad_response"
    (answer,) = dying_node.answers
    assert answer.completion_tokens is None  # the node never reported its counts
    row = LLMCall.objects.get(job=job)
    assert (row.status, row.error_code, row.estimated) == ("error", "node_bad_response", True)
    assert row.prompt_tokens > 0
    # The pieces the script got are tokens the node generated: never fewer counted than pieces delivered (a piece is
    # at least one token), never more than the call was granted.
    assert len(job.result["pieces"]) <= row.completion_tokens <= 200
    assert (job.prompt_tokens, job.completion_tokens) == (row.prompt_tokens, row.completion_tokens)
    assert (job.llm_calls, job.unmetered_calls, job.estimated_calls) == (1, 0, 1)
    assert job.result["usage"]["estimatedCalls"] == 1
    assert job.result["usage"]["completionTokens"] == row.completion_tokens


def test_an_ollama_answer_without_its_prompt_count_is_billed_with_an_estimated_prompt(
        run_script, ollama_without_prompt_counts):
    script = '''
import ai_client


def main(event, context):
    return [ai_client.generate("Say hi.", max_tokens=5, temperature=0, seed=42),
            "".join(ai_client.chat([{"role": "user", "content": "Hi"}], stream=True, max_tokens=5, temperature=0))]
'''
    job = run_script(script)

    assert job.status == "succeeded", job.stderr
    rows = list(LLMCall.objects.filter(job=job).order_by("created_at", "id"))
    real = ollama_without_prompt_counts.answers
    assert len(rows) == len(real) == 2
    for row, answer in zip(rows, real):
        assert row.status == "ok" and row.estimated
        assert row.completion_tokens == answer.completion_tokens  # reported: billed as reported
        assert row.prompt_tokens >= answer.prompt_tokens > 0  # not reported: an upper bound, never zero
    assert (job.estimated_calls, job.unmetered_calls) == (2, 0)


def test_a_whole_call_past_the_call_timeout_is_cancelled_and_billed_for_what_was_generated(run_script, node, settings):
    settings.AI_CALL_TIMEOUT = 3
    script = RAW_HTTP + '''
import time


def main(event, context):
    started = time.monotonic()
    body = {"prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "max_tokens": 1500, "temperature": 0, "seed": 42}
    status, _, payload = send("POST", "/v1/completions", body)
    return {"status": status, "body": json.loads(payload), "seconds": time.monotonic() - started}
'''
    job = run_script(script)

    assert job.status == "succeeded", job.stderr
    assert (job.result["status"], job.result["body"]["code"]) == (502, "node_timeout")
    assert job.result["seconds"] < 15
    (answer,) = node.answers
    assert answer.completion_tokens is None  # the gateway hung up on the node before it finished
    row = LLMCall.objects.get(job=job)
    assert (row.error_code, row.estimated, row.streamed) == ("node_timeout", True, False)
    assert row.prompt_tokens > 0 and 0 < row.completion_tokens < 1500
    assert (job.estimated_calls, job.unmetered_calls) == (1, 0)


def test_estimated_calls_are_shown_in_the_result_the_usage_api_the_csv_and_the_dashboard(run_script, dying_node,
                                                                                       alice, operator):
    if dying_node.kind == "ollama":
        pytest.skip("one kind is enough to show the figures")
    job = run_script(STREAM_UNTIL_IT_BREAKS)
    day = job.created_at.date().isoformat()

    status = alice.client.get(f"/status/{job.pk}").json()
    assert (status["estimatedCalls"], status["unmeteredCalls"], status["llmCalls"]) == (1, 0, 1)
    usage = alice.client.get("/api/v1/usage/", {"from": day, "to": day}).json()
    assert usage["totals"]["estimatedCalls"] == 1 and usage["results"][0]["estimatedCalls"] == 1
    response = alice.client.get("/api/v1/usage/jobs.csv", {"from": day, "to": day})
    (row,) = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert (row["job_id"], row["estimated_calls"], row["unmetered_calls"]) == (str(job.pk), "1", "0")
    operator.client.force_login(operator.user)
    page = operator.client.get("/admin/usage/", {"from": day, "to": day})
    assert page.status_code == 200
    assert '<span id="total-estimated">1</span> estimated' in page.content.decode()


def test_error_answers_name_no_node_address_but_the_ledger_keeps_it(run_script, dying_node):
    script = RAW_HTTP + STREAM_UNTIL_IT_BREAKS.replace("def main(event, context):", "def streamed():") + '''

def main(event, context):
    body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 200}
    status, _, payload = send("POST", "/v1/chat/completions", body)
    return {"streamed": streamed()["error"], "whole": [status, json.loads(payload)]}
'''
    job = run_script(script)

    assert job.status == "succeeded", job.stderr
    port = dying_node.url.rsplit(":", 1)[1]

    def assert_no_address(message: str) -> None:
        assert "ended the stream" in message
        assert "127.0.0.1" not in message and "http" not in message and port not in message, message

    assert_no_address(job.result["streamed"]["message"])
    status, whole = job.result["whole"]
    assert (status, whole.get("code")) == (502, "node_bad_response")
    assert_no_address(whole["error"])
    rows = LLMCall.objects.filter(job=job)
    assert rows.count() == 2
    assert all(dying_node.url in row.error_message for row in rows)
