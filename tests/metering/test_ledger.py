"""The ledger: one LLMCall row per model call, the job's totals as sums of its rows, unknown counts kept unknown,
and a job delivered twice billed once.
"""
from jobs.metering.ledger import ledger_totals
from jobs.metering.meter import prompt_bound
from jobs.models import Job, LLMCall
from jobs.runner import run_job
from tests.metering.helpers import RAW_HTTP, assert_billed_as_node_counted
from tests.support.accounts import as_json

FOUR_CALLS = '''
import ai_client

OPTIONS = {"temperature": 0, "seed": 42, "max_tokens": 5}


def main(event, context):
    answers = [
        ai_client.generate("Say hi.", **OPTIONS),
        ai_client.chat([{"role": "user", "content": "Hi"}], **OPTIONS),
        "".join(ai_client.generate("Count to three.", stream=True, **OPTIONS)),
        "".join(ai_client.chat([{"role": "user", "content": "Name a colour."}], stream=True, **OPTIONS)),
    ]
    return {"answers": answers, "usage": ai_client.usage()}
'''


def test_each_call_is_one_row_with_the_nodes_counts_and_the_job_totals_are_their_sums(run_script, each_node,
                                                                                       model_id, alice):
    job = run_script(FOUR_CALLS)

    assert_billed_as_node_counted(job, each_node)
    rows = list(LLMCall.objects.filter(job=job).order_by("created_at", "id"))
    assert [(r.endpoint, r.streamed) for r in rows] == [
        ("/api/generate", False), ("/api/chat", False), ("/api/generate", True), ("/api/chat", True)]
    assert [(r.prompt_tokens, r.completion_tokens) for r in rows] == [
        (a.prompt_tokens, a.completion_tokens) for a in each_node.answers]
    for row in rows:
        assert row.model_id == model_id
        assert row.node == f"recorded-{each_node.kind}"
        assert row.status == "ok" and row.error_code == "" and row.error_message == ""
        assert row.max_tokens_granted == 5 and row.done_reason in ("stop", "length")
        assert row.duration_ms >= 1 and row.node_duration_ms is not None and row.node_duration_ms >= 0
        assert row.total_tokens == row.prompt_tokens + row.completion_tokens
    # The budget rests on this: the gateway's bound of a prompt is never below what the node counted for it.
    bounds = [prompt_bound([text]) for text in ("Say hi.", "Hi", "Count to three.", "Name a colour.")]
    assert all(row.prompt_tokens <= bound for row, bound in zip(rows, bounds))
    assert job.prompt_tokens == sum(r.prompt_tokens for r in rows)
    assert job.completion_tokens == sum(r.completion_tokens for r in rows)
    assert job.llm_token_count == sum(r.total_tokens for r in rows)
    assert job.llm_calls == 4 and job.unmetered_calls == 0

    shown = as_json(alice.client.get(f"/status/{job.pk}"))
    assert (shown["promptTokens"], shown["completionTokens"], shown["llm_token_count"], shown["llmCalls"],
            shown["unmeteredCalls"]) == (job.prompt_tokens, job.completion_tokens, job.llm_token_count, 4, 0)
    usage = job.result["usage"]
    assert (usage["promptTokens"], usage["completionTokens"], usage["llmCalls"]) == (
        job.prompt_tokens, job.completion_tokens, 4)


def test_a_call_whose_counts_the_node_did_not_report_is_billed_with_estimated_counts_not_zero(
        run_script, node_without_counts, alice):
    job = run_script(FOUR_CALLS)

    assert job.status == "succeeded", job.stderr
    assert len(job.result["answers"]) == 4  # the script got its answers
    rows = list(LLMCall.objects.filter(job=job).order_by("created_at", "id"))
    real = [(a.prompt_tokens, a.completion_tokens) for a in node_without_counts.answers]  # the proxy saw them
    assert len(rows) == 4 == len(real)
    assert all(r.status == "ok" and r.estimated for r in rows)
    for row, (prompt, completion) in zip(rows, real):
        assert row.completion_tokens <= 5  # never more than the call was granted
        if node_without_counts.kind == "openai":  # the node's own tokenizer counted them
            assert row.prompt_tokens == prompt
            assert abs(row.completion_tokens - completion) <= 1
        else:  # no tokenizer: an upper bound
            assert row.prompt_tokens >= prompt and row.completion_tokens >= completion
    assert (job.llm_calls, job.unmetered_calls, job.estimated_calls) == (4, 0, 4)
    assert job.prompt_tokens == sum(r.prompt_tokens for r in rows) > 0
    assert job.completion_tokens == sum(r.completion_tokens for r in rows) > 0
    assert ledger_totals(str(job.pk)) == {"prompt_tokens": job.prompt_tokens, "completion_tokens":
                                          job.completion_tokens, "llm_calls": 4, "unmetered_calls": 0,
                                          "estimated_calls": 4}
    shown = as_json(alice.client.get(f"/status/{job.pk}"))
    assert (shown["llmCalls"], shown["unmeteredCalls"], shown["estimatedCalls"]) == (4, 0, 4)
    assert job.result["usage"]["estimatedCalls"] == 4 and job.result["usage"]["unmeteredCalls"] == 0


def test_a_call_the_node_refuses_is_one_error_row_and_is_not_retried(run_script, node, settings):
    settings.GATEWAY_MAX_BODY_BYTES = 64 * 1024
    script = '''
import ai_client


def main(event, context):
    try:
        ai_client.chat([{"role": "user", "content": "sea " * 1500}], max_tokens=3)  # longer than the context
        return "answered"
    except ai_client.AIClientError as exc:
        return {"code": exc.code, "status": exc.status}
'''
    job = run_script(script)

    assert job.status == "succeeded", job.stderr
    assert job.result == {"code": "node_http_error", "status": 400}
    assert [a.status for a in node.answers] == [400]
    row = LLMCall.objects.get(job=job)
    assert (row.status, row.error_code, row.prompt_tokens, row.completion_tokens) == (
        "error", "node_http_error", None, None)
    assert "context" in row.error_message
    assert (job.llm_calls, job.prompt_tokens, job.completion_tokens) == (1, 0, 0)


def test_a_job_delivered_twice_is_run_and_billed_once(run_script, node):
    job = run_script(FOUR_CALLS)
    assert_billed_as_node_counted(job, node)
    billed = (job.prompt_tokens, job.completion_tokens, job.llm_calls)

    run_job(job.pk)  # the broker delivers the same message again

    again = Job.objects.get(pk=job.pk)
    assert again.deliveries == 2
    assert (again.prompt_tokens, again.completion_tokens, again.llm_calls) == billed
    assert LLMCall.objects.filter(job=job).count() == 4 == len(node.answers)
    assert again.status == job.status and again.finished_at == job.finished_at


def test_ledger_rows_come_only_from_the_gateway_whatever_the_script_posts(run_script, node):
    script = RAW_HTTP + '''
def main(event, context):
    statuses = {}
    fake = {"job": context["jobId"], "model_id": "x", "prompt_tokens": 0, "completion_tokens": 0}
    for path in ("/_job/calls", "/_job/usage", "/_job/ledger", "/api/llmcall"):
        statuses[path] = send("POST", path, fake)[0]
    return statuses
'''
    job = run_script(script)

    assert_billed_as_node_counted(job, node)
    assert set(job.result.values()) == {404}
    assert not LLMCall.objects.filter(job=job).exists()
