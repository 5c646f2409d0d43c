"""Scripts that try to lower their bill, or to reach past the gateway. None of it changes what the job is billed:
its tokens stay exactly the node's own counts for the calls the gateway forwarded, and nothing else breaks.

(Concurrent calls against a budget are in test_token_budgets.py; streams closed half way in
test_streams_closed_half_way.py.)
"""
import pytest

from jobs.models import LLMCall
from tests.metering.helpers import RAW_HTTP, assert_billed_as_node_counted

# Every test runs on a cold container and on a pooled (warm) one.
pytestmark = pytest.mark.usefixtures("execution")

ONE_REAL_CALL = '''
import ai_client

def real_call():
    return ai_client.generate("Say hi.", temperature=0, seed=42, max_tokens=6)
'''


def test_fake_usage_files_and_claims_do_not_change_the_bill(run_script, node):
    script = RAW_HTTP + ONE_REAL_CALL + '''
FAKE = {"prompt_tokens": 0, "completion_tokens": 0, "llm_token_count": 0, "promptTokens": 0,
        "completionTokens": 0, "total_tokens": 0, "llmCalls": 0}


def main(event, context):
    written = {}
    for path in ("/job/out/usage.json", "/job/out/llm_usage.json", "/tmp/usage.json", "/run/ainode/usage.json",
                 "/job/code/usage.json", "/opt/ainode/usage.json", "/opt/ainode/ai_client.py"):
        try:
            with open(path, "w") as handle:
                json.dump(FAKE, handle)
            written[path] = "written"
        except OSError as exc:
            written[path] = type(exc).__name__
    real_call()
    real_call()
    print(json.dumps({"usage": FAKE}))  # an old-style usage line on stdout
    posted = {path: send("POST", path, FAKE)[0] for path in ("/_job/usage", "/_job/ledger")}
    return {"written": written, "posted": posted, **FAKE}
'''
    job = run_script(script)

    assert_billed_as_node_counted(job, node)
    assert job.llm_calls == 2 and job.prompt_tokens > 0 and job.completion_tokens > 0
    # The code and the SDK are read-only; the writable places mean nothing to the meter.
    assert job.result["written"]["/job/code/usage.json"] != "written"
    assert job.result["written"]["/opt/ainode/ai_client.py"] != "written"
    assert job.result["written"]["/job/out/usage.json"] == "written"
    assert job.result["posted"] == {"/_job/usage": 404, "/_job/ledger": 404}


def test_the_model_server_and_other_hosts_are_out_of_reach(run_script, node, real_node):
    ports = sorted({8090, 11435, *(int(url.rsplit(":", 1)[1]) for url in (real_node.openai_url,
                                                                         real_node.ollama_url, node.url))})
    script = '''
import os, socket, urllib.request


def main(event, context):
    attempts = {}
    for port in event["ports"]:
        for host in ("127.0.0.1", "localhost"):
            try:
                socket.create_connection((host, port), timeout=3).close()
                attempts[f"{host}:{port}"] = "connected"
            except OSError as exc:
                attempts[f"{host}:{port}"] = type(exc).__name__
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=3)
            attempts[f"http:{port}"] = "answered"
        except OSError as exc:
            attempts[f"http:{port}"] = type(exc).__name__
    return {"attempts": attempts, "interfaces": sorted(os.listdir("/sys/class/net"))}
'''
    job = run_script(script, input_data={"ports": ports})

    assert job.status == "succeeded", job.stderr
    attempts = job.result["attempts"]
    assert attempts and not {"connected", "answered"} & set(attempts.values()), attempts
    # Inside the container 127.0.0.1 is the container's own loopback, where nothing listens.
    assert {outcome for name, outcome in attempts.items() if name.startswith("127.")} == {"ConnectionRefusedError"}
    assert set(job.result["interfaces"]) <= {"lo"}
    assert_billed_as_node_counted(job, node)
    assert job.llm_calls == 0 and node.answers == []


def test_another_model_is_refused_in_both_apis_and_never_reaches_the_node(run_script, node, model_id):
    script = RAW_HTTP + ONE_REAL_CALL + '''
import ai_client


def main(event, context):
    refused = {}
    for name, path, body in [
        ("ollama_generate", "/api/generate", {"model": "llama3:70b", "prompt": "Hi", "stream": False}),
        ("ollama_chat", "/api/chat", {"model": "llama3:70b", "messages": [{"role": "user", "content": "Hi"}]}),
        ("openai_completions", "/v1/completions", {"model": "gpt-4o", "prompt": "Hi", "max_tokens": 3}),
        ("openai_chat_stream", "/v1/chat/completions", {"model": "gpt-4o", "stream": True,
                                                         "messages": [{"role": "user", "content": "Hi"}]}),
        ("other_case", "/api/generate", {"model": os.environ["LLM_MODEL"].upper(), "prompt": "Hi"}),
        ("model_not_a_string", "/api/generate", {"model": ["x"], "prompt": "Hi"}),
    ]:
        status, _, payload = send("POST", path, body)
        refused[name] = [status, json.loads(payload)["code"]]
    try:
        ai_client.chat([{"role": "user", "content": "Hi"}], model="llama3:70b")
    except ai_client.ModelNotAllowed as exc:
        refused["sdk"] = [exc.status, exc.code]
    real_call()
    return refused
'''
    job = run_script(script)

    assert_billed_as_node_counted(job, node)
    refused = job.result
    for name in ("ollama_generate", "ollama_chat", "openai_completions", "openai_chat_stream", "other_case", "sdk"):
        assert refused[name] == [403, "model_not_allowed"], name
    assert refused["model_not_a_string"] == [400, "invalid_request"]
    assert job.llm_calls == 1 and len(node.answers) == 1
    assert list(LLMCall.objects.filter(job=job).values_list("model_id", flat=True)) == [model_id]


def test_a_huge_output_length_is_capped_before_the_node_sees_it(run_script, each_node, settings):
    settings.AI_MAX_OUTPUT_TOKENS = 7
    script = RAW_HTTP + '''
MODEL = os.environ["LLM_MODEL"]
STORY = "Write a very long story about the sea."


def main(event, context):
    statuses = []
    for path, body in [
        ("/api/generate", {"model": MODEL, "prompt": STORY, "stream": False,
                           "options": {"num_predict": 10 ** 9, "temperature": 0, "seed": 42}}),
        ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": STORY}],
                       "options": {"num_predict": -1, "temperature": 0}}),  # Ollama's "no limit"
        ("/v1/completions", {"model": MODEL, "prompt": STORY, "max_tokens": 10 ** 9, "temperature": 0}),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": STORY}], "stream": True,
                                  "max_completion_tokens": 10 ** 6, "temperature": 0}),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": STORY}],
                                  "temperature": 0}),  # no limit given at all
    ]:
        statuses.append(send("POST", path, body)[0])
    return statuses
'''
    job = run_script(script)

    assert_billed_as_node_counted(job, each_node)
    assert job.result == [200] * 5
    assert [a.requested_max_tokens for a in each_node.answers] == [7] * 5
    assert all(a.completion_tokens <= 7 for a in each_node.answers)
    assert set(LLMCall.objects.filter(job=job).values_list("max_tokens_granted", flat=True)) == {7}


BAD_REQUESTS = RAW_HTTP + ONE_REAL_CALL + '''
def exchange(head, body_size=0, chunk=b"x" * (1 << 20)):
    """Send a request head and `body_size` bytes of body over a raw socket; (status, code) of the answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(GATEWAY_SOCKET)
    sent = 0
    try:
        sock.sendall(head)
        while sent < body_size:
            sock.sendall(chunk[: body_size - sent])
            sent += len(chunk)
    except OSError:
        pass  # the gateway answered and hung up without reading it all
    data = b""
    try:
        while part := sock.recv(65536):
            data += part
    except OSError:
        pass
    sock.close()
    head_part, _, body = data.partition(b"\\r\\n\\r\\n")
    status = int(head_part.split(b" ", 2)[1]) if head_part else None
    try:
        code = json.loads(body)["code"]
    except ValueError:
        code = None
    return [status, code, sent]


def main(event, context):
    answers = {}
    for name, path, raw in [
        ("malformed_json", "/api/generate", b'{"model": "x", "prompt": '),
        ("not_utf8", "/v1/completions", b"\\xff\\xfe{}"),
        ("not_an_object", "/v1/chat/completions", b"[1, 2, 3]"),
        ("messages_not_a_list", "/api/chat", b'{"messages": "hello"}'),
        ("max_tokens_not_a_number", "/v1/completions", b'{"prompt": "Hi", "max_tokens": "lots"}'),
        ("num_predict_a_float", "/api/generate", b'{"prompt": "Hi", "options": {"num_predict": 2.5}}'),
    ]:
        status, _, payload = send("POST", path, raw=raw)
        answers[name] = [status, json.loads(payload)["code"]]
    size = 50 * 1024 * 1024
    answers["fifty_megabytes"] = exchange(
        b"POST /api/generate HTTP/1.1\\r\\nHost: gateway\\r\\nContent-Type: application/json\\r\\n"
        b"Content-Length: %d\\r\\n\\r\\n" % size, size)
    answers["no_length"] = exchange(
        b"POST /api/generate HTTP/1.1\\r\\nHost: gateway\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n"
        b"2\\r\\n{}\\r\\n0\\r\\n\\r\\n")
    answers["negative_length"] = exchange(
        b"POST /api/generate HTTP/1.1\\r\\nHost: gateway\\r\\nContent-Length: -5\\r\\n\\r\\n")
    forbidden = {}
    for method, path in [("POST", "/api/pull"), ("DELETE", "/api/delete"), ("POST", "/api/delete"),
                         ("POST", "/api/create"), ("POST", "/api/copy"), ("POST", "/api/push"),
                         ("POST", "/api/blobs/sha256:0123"), ("HEAD", "/api/blobs/sha256:0123"),
                         ("PUT", "/api/pull"), ("POST", "/api/pull?insecure=true")]:
        status, _, payload = send(method, path, {"model": "tinyllama", "name": "tinyllama"})
        forbidden[f"{method} {path}"] = [status, json.loads(payload)["code"] if payload else None]
    unknown = {path: send(method, path, {})[0] for method, path in [("POST", "/api/show"), ("GET", "/api/ps"),
                                                                    ("GET", "/metrics"), ("GET", "/../etc/passwd")]}
    real_call()
    return {"answers": answers, "forbidden": forbidden, "unknown": unknown}
'''


def test_malformed_and_oversized_requests_are_refused_and_the_gateway_keeps_serving(run_script, node):
    job = run_script(BAD_REQUESTS.replace("import http.client", "import http.client, socket"))

    assert_billed_as_node_counted(job, node)
    assert job.llm_calls == 1 and len(node.answers) == 1
    answers = job.result["answers"]
    assert answers["malformed_json"] == [400, "malformed_json"]
    assert answers["not_utf8"] == [400, "malformed_json"]
    for name in ("not_an_object", "messages_not_a_list"):
        assert answers[name] == [400, "invalid_request"], name
    for name in ("max_tokens_not_a_number", "num_predict_a_float"):
        assert answers[name] == [400, "invalid_option"], name
    status, code, sent = answers["fifty_megabytes"]
    assert (status, code) == (413, "body_too_large")
    assert sent < 50 * 1024 * 1024, "the gateway answered before reading the body"
    assert answers["no_length"][:2] == [411, "length_required"]
    assert answers["negative_length"][:2] == [413, "body_too_large"]


def test_node_management_routes_are_forbidden_whatever_the_method(run_script, node):
    job = run_script(BAD_REQUESTS.replace("import http.client", "import http.client, socket"))

    assert_billed_as_node_counted(job, node)
    for route, (status, code) in job.result["forbidden"].items():
        assert status == 403, route
        if not route.startswith("HEAD"):  # a HEAD answer has no body
            assert code == "route_forbidden", route
    assert set(job.result["unknown"].values()) == {404}
    # ai_client.generate is a templated generate: a chat completion on an OpenAI-kind node.
    assert {a.path for a in node.answers} == ({"/api/generate"} if node.kind == "ollama" else {"/v1/chat/completions"})


@pytest.mark.parametrize("field", ["prompt", "messages"])
def test_a_prompt_as_large_as_the_body_limit_is_billed_as_the_node_counted(run_script, node, settings, field):
    """A big prompt is a legitimate (if costly) call: billed with the node's own prompt count."""
    settings.GATEWAY_MAX_BODY_BYTES = 64 * 1024
    script = RAW_HTTP + f'''
def main(event, context):
    text = "sea " * 600  # within the node's context (1024 tokens a slot)
    body = {{"prompt": text}} if "{field}" == "prompt" else {{"messages": [{{"role": "user", "content": text}}]}}
    path = "/api/generate" if "{field}" == "prompt" else "/api/chat"
    status, _, payload = send("POST", path, {{**body, "stream": False, "options": {{"num_predict": 2}}}})
    return [status, json.loads(payload).get("prompt_eval_count")]
'''
    job = run_script(script)

    assert_billed_as_node_counted(job, node)
    assert job.result == [200, node.answers[0].prompt_tokens]
    assert node.answers[0].prompt_tokens > 500
