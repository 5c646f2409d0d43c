"""Every call that reached the node is billed, and never by a byte bound: a stream the script abandons before its
first token is billed its prompt (the node had started on it); a stream cut off by a node that died is billed by
the pieces it delivered, within a tenth, and counted exactly by the node's tokenizer once the node is back, with the
job, the ledger, the roll-ups and the quota corrected together."""
import uuid
from decimal import Decimal

from billing.models import ModelPrice, UsageDaily
from jobs.metering.audit import verify_ledger
from jobs.metering.ledger import ledger_totals
from jobs.metering.receipts import chain_sums
from jobs.metering.reconcile import reconcile_estimated_calls
from jobs.models import LLMCall
from models_catalog.models import AINode
from nodeclient import client_for
from tests.metering.helpers import RAW_HTTP
from tests.support.receipts import checked_chain_with_corrections
from tests.metering.test_estimated_counts import CUT_AFTER, STREAM_UNTIL_IT_BREAKS, _tampering_node

LONG_PROMPT = "Describe, one by one and at length, every lighthouse on the coast of Brittany. " * 40

ABANDON = RAW_HTTP + r'''
import time

def main(event, context):
    body = json.dumps({"model": os.environ["LLM_MODEL"], "stream": True, "max_tokens": 50, "temperature": 0,
                       "messages": [{"role": "user", "content": event["prompt"]}]}).encode()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(GATEWAY_SOCKET)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    time.sleep(0.2)  # the node is still reading the prompt: no token has come yet
    sock.close()
    time.sleep(1)
    return {"abandoned": True}
'''


def _node_count(real_node, model_id: str, **what) -> int:
    client = client_for("openai", real_node.openai_url, 30.0)
    try:
        return (client.count_prompt_tokens(model_id, **what) if "messages" in what
                else client.count_text_tokens(model_id, what["text"]))
    finally:
        client.close()


def test_a_stream_abandoned_before_its_first_token_is_billed_its_exact_prompt(run_script, node, real_node, model_id):
    prompt = f"{uuid.uuid4()}: {LONG_PROMPT}"  # new to the node: no cached prefix shortens its prefill
    job = run_script(ABANDON, input_data={"prompt": prompt})

    assert job.status == "succeeded", job.stderr
    row = LLMCall.objects.get(job=job)
    assert row.error_code == "call_cancelled" and row.estimated
    exact = _node_count(real_node, model_id, messages=[{"role": "user", "content": prompt}])
    assert exact > 500
    assert row.prompt_tokens == exact
    assert row.completion_tokens < 20  # none, unless the node was quicker than the script's 0.2 s
    assert (job.prompt_tokens, job.unmetered_calls) == (exact, 0)


def test_a_stream_cut_off_by_a_dead_node_is_billed_by_what_it_delivered_then_counted_exactly(
        run_script, settings, real_node, model_id):
    proxy = _tampering_node(settings, real_node, "openai", lambda seen, event: event)

    def die_after_the_cut(seen: int, event: dict) -> "dict | str":
        if seen <= CUT_AFTER:
            return event
        proxy.stop()  # the node is gone: nothing it could count with answers any more
        return "cut"

    proxy.tamper = die_after_the_cut
    ModelPrice.objects.create(model_id=model_id, price_per_1k_prompt=Decimal("1"), price_per_1k_completion=Decimal("2"))
    job = run_script(STREAM_UNTIL_IT_BREAKS)

    delivered = job.result["pieces"]
    row = LLMCall.objects.get(job=job)
    assert row.estimated and row.recount is not None
    assert len(delivered) <= row.completion_tokens <= len(delivered) * 1.1
    assert reconcile_estimated_calls() == 0  # the node is still down: the call waits

    AINode.objects.filter(name="recorded-openai").update(url=real_node.openai_url)  # the node is back
    assert reconcile_estimated_calls() == 1
    row.refresh_from_db()
    job.refresh_from_db()
    exact = _node_count(real_node, model_id, text="".join(delivered))
    assert row.recount is None and row.completion_tokens == min(exact, 200)
    assert row.prompt_tokens == _node_count(real_node, model_id, messages=[
        {"role": "user", "content": "Tell me a long story about the sea."}])
    assert row.cost == (row.prompt_tokens * Decimal("0.001") + row.completion_tokens * Decimal("0.002"))
    totals = ledger_totals(str(job.pk))
    assert (job.prompt_tokens, job.completion_tokens) == (totals["prompt_tokens"], totals["completion_tokens"])
    assert job.cost == row.cost
    rollup = UsageDaily.objects.get(owner=job.owner, model_id=model_id)
    assert (rollup.prompt_tokens, rollup.completion_tokens, rollup.cost) == (
        row.prompt_tokens, row.completion_tokens, row.cost)
    assert reconcile_estimated_calls() == 0  # counted once
    # The call's receipt stays as it was; a correction naming it is appended to the job's chain, which adds up.
    call_receipt, job_receipt, correction = checked_chain_with_corrections(job)
    assert (correction["kind"], correction["corrects"], correction["call"]) == ("correction", call_receipt["hash"],
                                                                              row.pk)
    assert call_receipt["body"]["completionTokens"] + correction["completionTokens"] == row.completion_tokens
    assert chain_sums([call_receipt["body"], correction])["promptTokens"] == job.prompt_tokens
    assert job_receipt["kind"] == "job" and verify_ledger().findings == []
