"""When a job's container ends, its gateway ends with it: requests not yet forwarded are dropped unstarted, calls in
flight are cancelled at the node and billed for what the node generated, and the job's wall time, the gateway's
drain included, stays within its timeout plus a few seconds.
"""
import pytest

from jobs.models import LLMCall
from tests.metering.helpers import RAW_HTTP
from tests.support.waiting import wait_for

TIMEOUT = 10
LONG = 1500

PARK_AND_WAIT = RAW_HTTP + '''
import threading
import time

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # a raw prompt the model continues for as long as it may


def long_call():
    send("POST", "/v1/completions", {"prompt": COUNTING, "max_tokens": %d, "stream": True, "temperature": 0})


def park(count):
    """Requests sent whole and never read: they wait for a call slot that the long calls hold."""
    body = json.dumps({"prompt": "Say hi.", "stream": False, "options": {"num_predict": 5}}).encode()
    head = b"POST /api/generate HTTP/1.1\\r\\nHost: gateway\\r\\nContent-Type: application/json\\r\\n"
    parked = []
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(GATEWAY_SOCKET)
        sock.sendall(head + b"Content-Length: %%d\\r\\n\\r\\n" %% len(body) + body)
        parked.append(sock)
    return parked


def main(event, context):
    for _ in range(2):
        threading.Thread(target=long_call, daemon=True).start()
    time.sleep(2)
    parked = park(20)
    if event["exit"]:
        os._exit(0)  # the container ends now, its requests still parked
    time.sleep(600)  # the job's timeout ends it
''' % LONG


def _wall_seconds(job) -> float:
    return (job.finished_at - job.started_at).total_seconds()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("exits", [False, True], ids=["killed_at_its_timeout", "exits_at_once"])
def test_parked_requests_are_dropped_and_calls_in_flight_cancelled_when_the_container_ends(run_script, node,
                                                                                         settings, exits):
    settings.GATEWAY_MAX_CONCURRENT_CALLS = 2
    job = run_script(PARK_AND_WAIT, input_data={"exit": exits}, timeout_seconds=TIMEOUT)

    if not exits:  # a script that exits at once ends its job at once; the other one runs into its timeout
        assert job.status == "timed_out", (job.error_code, job.stderr[-2000:])
    assert _wall_seconds(job) <= TIMEOUT + 6
    rows = list(LLMCall.objects.filter(job=job))
    wait_for(lambda: len(node.answers) >= len(rows), timeout=10, message="the proxy to see every call end")
    # Only the two long calls ever reached the node; none of the twenty parked requests did.
    assert len(rows) == len(node.answers) == job.llm_calls == 2
    assert {a.path for a in node.answers} == {"/v1/completions"}
    assert all(a.completion_tokens is None for a in node.answers)  # cut before the node's end
    for row in rows:
        assert (row.error_code, row.estimated) == ("call_cancelled", True)
        assert row.prompt_tokens > 0 and 0 < row.completion_tokens < LONG
    assert job.completion_tokens == sum(r.completion_tokens for r in rows)
