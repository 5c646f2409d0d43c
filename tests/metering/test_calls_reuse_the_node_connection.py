"""A job's model calls reach the node over a kept-alive connection: a call does not wait for a new one. A node that
closed that connection (as llama.cpp does after a few idle seconds) costs a retry on a fresh one, never a failed
call or a call billed twice. Both node kinds, through a recording proxy that keeps connections alive as the node
does and counts those the gateway opens.
"""
from tests.metering.helpers import assert_billed_as_node_counted

CALLS = '''
import ai_client


def main(event, context):
    first = ai_client.generate("Say hi.", temperature=0, seed=42, max_tokens=3)
    second = ai_client.chat([{"role": "user", "content": "Say hello."}], temperature=0, seed=42, max_tokens=3)
    third = "".join(ai_client.generate("Count to three.", stream=True, temperature=0, seed=42, max_tokens=3))
    return {"answers": [first, second, third], "usage": ai_client.usage()}
'''


def test_calls_one_after_another_share_one_connection_to_the_node(run_script, each_node):
    before = each_node.connections  # the catalogue's own, when it synced

    job = run_script(CALLS)

    assert_billed_as_node_counted(job, each_node)
    assert job.llm_calls == 3
    assert each_node.connections - before == 1


def test_a_connection_the_node_closed_is_replaced_and_each_call_is_billed_once(run_script, each_node):
    each_node.hang_up_kept_alive = True  # every request on a connection that served one is dropped unanswered
    before = each_node.connections

    job = run_script(CALLS)

    assert_billed_as_node_counted(job, each_node)
    assert job.llm_calls == 3 and job.result["usage"]["llmCalls"] == 3
    # Every call after the first found its kept connection closed (on kind openai, so did the first: the gateway
    # had asked the node for its models on it), and each dropped request went once more, on a new connection.
    assert each_node.hang_ups >= 2
    assert each_node.connections - before == each_node.hang_ups + 1
