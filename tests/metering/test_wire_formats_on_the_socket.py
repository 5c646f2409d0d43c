"""A script that speaks raw HTTP to the gateway's socket, in Ollama's API and in OpenAI's, streamed and not.

Whatever the node's kind (each test runs with the node as kind openai and as kind ollama), the gateway answers in
the API the script used, and bills every call with the node's own counts.
"""
import pytest

from jobs.models import LLMCall
from tests.metering.helpers import RAW_HTTP, assert_billed_as_node_counted

WIRE_SCRIPT = RAW_HTTP + '''
MODEL = os.environ["LLM_MODEL"]
SAMPLING = {"temperature": 0, "seed": 42}
OLLAMA_OPTIONS = {"temperature": 0, "seed": 42, "num_predict": 5}
MESSAGES = [{"role": "user", "content": "Name a fruit."}]

CALLS = [
    ("/api/generate", {"model": MODEL, "prompt": "Say hi.", "stream": False, "options": OLLAMA_OPTIONS}),
    ("/api/generate", {"model": MODEL, "prompt": "Say hi.", "options": OLLAMA_OPTIONS}),  # Ollama streams by default
    ("/api/chat", {"model": MODEL, "messages": MESSAGES, "stream": False, "options": OLLAMA_OPTIONS}),
    ("/api/chat", {"model": MODEL, "messages": MESSAGES, "stream": True, "options": OLLAMA_OPTIONS}),
    ("/v1/completions", {"model": MODEL, "prompt": "Say hi.", "max_tokens": 5, **SAMPLING}),
    ("/v1/completions", {"model": MODEL, "prompt": "Say hi.", "max_tokens": 5, "stream": True,
                         "stream_options": {"include_usage": True}, **SAMPLING}),
    ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "max_completion_tokens": 5, **SAMPLING}),
    # No include_usage: the script is shown no counts, and is billed all the same.
    ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "max_tokens": 5, "stream": True, **SAMPLING}),
]


def main(event, context):
    answers = []
    for path, body in CALLS:
        status, content_type, payload = send("POST", path, body)
        streamed = "json" not in content_type or "ndjson" in content_type
        answers.append({"path": path, "status": status, "contentType": content_type,
                        "events": events(content_type, payload) if streamed else [json.loads(payload)]})
    listings = {path: json.loads(send("GET", path)[2]) for path in ("/api/tags", "/v1/models")}
    return {"answers": answers, "listings": listings}
'''

OLLAMA_TEXT = {"/api/generate": lambda e: e["response"], "/api/chat": lambda e: e["message"]["content"]}
OPENAI_OBJECT = {"/v1/completions": ("text_completion", "text_completion"),
                 "/v1/chat/completions": ("chat.completion", "chat.completion.chunk")}


def _streamed(answer: dict) -> bool:
    return answer["contentType"] != "application/json"


def _check_ollama(answer: dict) -> tuple[int, int]:
    *pieces, last = answer["events"]
    for event in pieces:
        assert event["done"] is False and isinstance(OLLAMA_TEXT[answer["path"]](event), str)
    assert last["done"] is True and last["done_reason"] in ("stop", "length")
    assert isinstance(OLLAMA_TEXT[answer["path"]](last), str)
    return last["prompt_eval_count"], last["eval_count"]


def _check_openai(answer: dict, streamed: bool) -> tuple[int, int] | None:
    whole_object, chunk_object = OPENAI_OBJECT[answer["path"]]
    if not streamed:
        (body,) = answer["events"]
        assert body["object"] == whole_object
        choice = body["choices"][0]
        text = choice["text"] if answer["path"] == "/v1/completions" else choice["message"]["content"]
        assert isinstance(text, str) and choice["finish_reason"] in ("stop", "length")
        usage = body["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        return usage["prompt_tokens"], usage["completion_tokens"]
    with_choices = [e for e in answer["events"] if e["choices"]]
    assert all(e["object"] == chunk_object for e in answer["events"])
    assert [e["choices"][0]["finish_reason"] for e in with_choices][-1] in ("stop", "length")
    assert all(e["choices"][0]["finish_reason"] is None for e in with_choices[:-1])
    usage_events = [e for e in answer["events"] if e.get("usage")]
    if not usage_events:
        return None
    (usage_event,) = usage_events
    assert usage_event["choices"] == []
    return usage_event["usage"]["prompt_tokens"], usage_event["usage"]["completion_tokens"]


def test_both_apis_streamed_or_not_answer_in_their_own_format_and_bill_the_nodes_counts(run_script, each_node,
                                                                                        model_id):
    job = run_script(WIRE_SCRIPT)

    assert_billed_as_node_counted(job, each_node)
    answers = job.result["answers"]
    assert [a["status"] for a in answers] == [200] * 8
    expected_types = ["application/json", "application/x-ndjson"] * 2 + ["application/json", "text/event-stream"] * 2
    assert [a["contentType"] for a in answers] == expected_types
    shown = [_check_ollama(a) if a["path"].startswith("/api/") else _check_openai(a, _streamed(a)) for a in answers]
    # What the gateway showed the script is what the node said, call by call (the last call asked for no usage).
    node_counts = [(a.prompt_tokens, a.completion_tokens) for a in each_node.answers]
    assert shown[:7] == node_counts[:7] and shown[7] is None
    assert all(0 < completion <= 5 for _, completion in node_counts)

    rows = LLMCall.objects.filter(job=job).order_by("created_at", "id")
    assert [(r.endpoint, r.streamed) for r in rows] == [(a["path"], _streamed(a)) for a in answers]
    assert [(r.prompt_tokens, r.completion_tokens) for r in rows] == node_counts
    assert {r.max_tokens_granted for r in rows} == {5}


def test_model_listings_in_both_apis_show_only_the_jobs_models(run_script, node, model_id):
    job = run_script(WIRE_SCRIPT.replace("for path, body in CALLS:", "for path, body in CALLS[:1]:"))

    assert_billed_as_node_counted(job, node)
    listings = job.result["listings"]
    assert [m["name"] for m in listings["/api/tags"]["models"]] == [model_id]
    assert listings["/v1/models"]["object"] == "list"
    assert [m["id"] for m in listings["/v1/models"]["data"]] == [model_id]


@pytest.mark.parametrize("path", ["/api/generate", "/v1/chat/completions"])
def test_a_call_without_a_model_uses_the_jobs_model(run_script, node, model_id, path):
    body = ('{"prompt": "Hi", "stream": False, "options": {"num_predict": 3, "temperature": 0}}'
            if path == "/api/generate" else
            '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0}')
    script = RAW_HTTP + f'''
def main(event, context):
    status, content_type, payload = send("POST", "{path}", {body})
    return {{"status": status, "body": json.loads(payload)}}
'''
    job = run_script(script)

    assert_billed_as_node_counted(job, node)
    assert job.result["status"] == 200 and job.result["body"]["model"] == model_id
    assert LLMCall.objects.get(job=job).model_id == model_id
