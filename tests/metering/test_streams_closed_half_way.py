"""A script that hangs up on a stream after its first piece: the node's tokens are billed all the same.

The gateway reads the node's stream to its end (the node generates those tokens whether anyone listens or not) and
bills the node's final counts. The script then ends at once, so the job's totals are written while the gateway may
still be reading: they must include the call all the same.
"""
import pytest

from jobs.models import LLMCall
from tests.metering.helpers import RAW_HTTP, assert_billed_as_node_counted

LONG = 40  # tokens asked for: long enough that the script hangs up well before the end

HANG_UP = RAW_HTTP + r'''
import socket

import ai_client

MODEL = os.environ["LLM_MODEL"]
LONG = int(os.environ["LONG_TOKENS"])
PROMPT = "Tell me a long story about a lighthouse keeper."
OPENING = "Once upon a time, in a lighthouse by the sea, there lived an old keeper who"
REQUESTS = {
    "ollama": ("/api/generate", {"model": MODEL, "prompt": OPENING, "stream": True,
                                 "options": {"num_predict": LONG, "temperature": 0, "seed": 42}}),
    "openai": ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}],
                                        "stream": True, "max_tokens": LONG, "temperature": 0, "seed": 42}),
}
WAIT_FOR_FIRST = True


def first_line_then_hang_up(path, body):
    """Send a streamed call over a raw socket, read up to the stream's first line, and hang up."""
    data = json.dumps(body).encode()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(GATEWAY_SOCKET)
    head = f"POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
    sock.sendall(head.encode() + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    received = b""
    while WAIT_FOR_FIRST and not received.partition(b"\r\n\r\n")[2].strip():
        received += sock.recv(4096)
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    return received.partition(b"\r\n\r\n")[2]


def main(event, context):
    read = {}
    for api in event["apis"]:
        read[api] = first_line_then_hang_up(*REQUESTS[api]).decode()
    if event.get("sdk"):
        pieces = ai_client.chat([{"role": "user", "content": PROMPT}], stream=True, max_tokens=LONG,
                                temperature=0, seed=42)
        read["sdk"] = next(pieces)
        pieces.close()
    if event.get("hard_exit"):
        # Skip the runtime's report as well: the container ends the moment the script does.
        os._exit(0)
    return read
'''


def _hang_up_script(*, wait_for_first: bool = True) -> str:
    script = HANG_UP.replace('int(os.environ["LONG_TOKENS"])', str(LONG))
    return script if wait_for_first else script.replace("WAIT_FOR_FIRST = True", "WAIT_FOR_FIRST = False")


def _assert_each_call_billed_in_full(job, node) -> None:
    rows = list(LLMCall.objects.filter(job=job).order_by("created_at", "id"))
    assert len(rows) == len(node.answers)
    assert sorted((r.prompt_tokens, r.completion_tokens) for r in rows) == sorted(
        (a.prompt_tokens, a.completion_tokens) for a in node.answers)
    assert all(r.status == "ok" and r.streamed for r in rows)
    # The script read one piece of each at most; the node generated more, and that is what is billed.
    assert all(a.completion_tokens > 3 for a in node.answers), node.answers


def test_a_stream_closed_half_way_is_billed_with_the_nodes_full_counts(run_script, each_node):
    job = run_script(_hang_up_script(), input_data={"apis": ["ollama", "openai"], "sdk": True})

    assert_billed_as_node_counted(job, each_node)
    assert set(job.result) == {"ollama", "openai", "sdk"}
    _assert_each_call_billed_in_full(job, each_node)


def test_a_script_that_exits_at_once_after_hanging_up_is_still_billed_in_full(run_script, node):
    job = run_script(_hang_up_script(), input_data={"apis": ["openai"], "hard_exit": True})

    # The script skipped the runtime's report; the job's status is not the point here, its bill is.
    assert (job.prompt_tokens, job.completion_tokens) == node.totals()
    assert job.llm_calls == 1
    _assert_each_call_billed_in_full(job, node)


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_a_stream_closed_before_its_first_piece_is_billed_too(run_script, node, api):
    job = run_script(_hang_up_script(wait_for_first=False), input_data={"apis": [api]})

    assert_billed_as_node_counted(job, node)
    _assert_each_call_billed_in_full(job, node)
