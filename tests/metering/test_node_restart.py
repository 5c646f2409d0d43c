"""A node that is restarting costs a call time, not the call: the gateway tries again, for up to
AI_NODE_WAIT_SECONDS, a call whose node refuses connections (nothing was asked of the node, so nothing can be
generated or billed twice), and the call is answered and billed once when the node is back. A call still refused
past the wait fails as before, billed nothing."""
import threading
import time
from urllib.parse import urlsplit

from jobs.models import LLMCall
from tests.metering.helpers import RecordingProxy

ONE_CALL = '''
import ai_client

def main(event, context):
    return ai_client.generate("Say yes.", max_tokens=3, temperature=0, seed=1)
'''


def test_a_call_whose_node_is_restarting_waits_for_it_and_is_billed_once(run_script, node, real_node, settings):
    settings.AI_NODE_WAIT_SECONDS = 20
    port = urlsplit(node.url).port
    node.stop()  # the node's address refuses connections, as a node that is restarting does
    back: list[RecordingProxy] = []
    timer = threading.Timer(3.0, lambda: back.append(RecordingProxy(real_node.openai_url, "openai",
                                                                    port=port).start()))
    timer.start()
    started = time.monotonic()
    try:
        job = run_script(ONE_CALL)
    finally:
        timer.join()
    try:
        assert job.status == "succeeded", (job.error_code, job.stderr)
        assert time.monotonic() - started > 3
        row = LLMCall.objects.get(job=job)
        assert (row.status, row.error_code) == ("ok", "")
        assert (row.prompt_tokens, row.completion_tokens) == back[0].totals()
    finally:
        back[0].stop()


def test_a_call_whose_node_stays_down_past_the_wait_fails_billed_nothing(run_script, node, settings):
    settings.AI_NODE_WAIT_SECONDS = 2
    node.stop()
    job = run_script(ONE_CALL)
    assert job.status == "failed"
    rows = LLMCall.objects.filter(job=job)
    assert rows and all(row.error_code == "node_unreachable" and not row.prompt_tokens for row in rows)
