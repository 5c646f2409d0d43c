"""A script that hangs up on a stream after its first piece: the call is cancelled at the node, and billed for what
the node generated until then.

The gateway closes its connection to the node as soon as it sees the script gone (llama.cpp and Ollama stop
generating then), and bills what was generated: the node never sent its final counts, so the gateway counts them
itself (the node's tokenizer, else an upper bound) and marks the call estimated. The script may end at once: the
job's totals are written once the call is on the ledger all the same.
"""
import pytest

from jobs.metering.ledger import ledger_totals
from jobs.models import LLMCall
from tests.metering.helpers import RAW_HTTP
from tests.support.waiting import wait_for

LONG = 300  # tokens asked for: far more than the few generated before the gateway sees the script gone

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


def _rows_once_the_node_is_done(job, node) -> list[LLMCall]:
    """The job's ledger rows, once the proxy has seen each call's end (it notes an answer when its relay ends)."""
    rows = list(LLMCall.objects.filter(job=job).order_by("created_at", "id"))
    wait_for(lambda: len(node.answers) >= len(rows), timeout=10, message="the proxy to see every call end")
    return rows


def _assert_each_call_cancelled_and_billed_for_what_was_generated(job, node) -> None:
    rows = _rows_once_the_node_is_done(job, node)
    assert len(rows) == len(node.answers) >= 1
    # The node never got to the end of any answer: the gateway hung up on it first.
    assert all(a.completion_tokens is None and a.requested_max_tokens == LONG for a in node.answers), node.answers
    for row in rows:
        assert row.streamed and row.estimated and row.error_code == "call_cancelled", row.error_message
        assert row.prompt_tokens > 0 and 0 < row.completion_tokens < LONG // 2
    assert (job.prompt_tokens, job.completion_tokens) == (sum(r.prompt_tokens for r in rows),
                                                          sum(r.completion_tokens for r in rows))
    assert (job.llm_calls, job.estimated_calls, job.unmetered_calls) == (len(rows), len(rows), 0)
    assert ledger_totals(str(job.pk))["completion_tokens"] == job.completion_tokens


def test_a_stream_closed_half_way_is_cancelled_at_the_node_and_billed_for_what_was_generated(run_script, each_node):
    job = run_script(_hang_up_script(), input_data={"apis": ["ollama", "openai"], "sdk": True})

    assert job.status == "succeeded", job.stderr
    assert set(job.result) == {"ollama", "openai", "sdk"}
    _assert_each_call_cancelled_and_billed_for_what_was_generated(job, each_node)


def test_a_script_that_exits_at_once_after_hanging_up_is_still_billed(run_script, node):
    job = run_script(_hang_up_script(), input_data={"apis": ["openai"], "hard_exit": True})

    # The script skipped the runtime's report; the job's status is not the point here, its bill is.
    _assert_each_call_cancelled_and_billed_for_what_was_generated(job, node)


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_a_stream_closed_before_its_first_piece_is_cancelled_too(run_script, node, api):
    job = run_script(_hang_up_script(wait_for_first=False), input_data={"apis": [api]})

    assert job.status == "succeeded", job.stderr
    rows = _rows_once_the_node_is_done(job, node)
    # Dropped before it was forwarded (no row, the node never saw it), or cancelled at the node soon after.
    assert len(rows) == len(node.answers) <= 1
    for row, answer in zip(rows, node.answers):
        assert answer.completion_tokens is None and row.error_code == "call_cancelled"
        assert row.completion_tokens is None or row.completion_tokens < LONG // 2
