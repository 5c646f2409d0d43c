"""What the gateway tells a job's live stream about its model calls: each call's start and end with the tokens as
the ledger recorded them (the gateway's estimate where the node did not report them), and running totals that end at the ledger's totals and
count the budget down. Real jobs, real model; the events are read back from the store."""
from jobs.events.store import event_store
from jobs.metering.ledger import ledger_totals
from jobs.models import LLMCall

THREE_CALLS = '''
import ai_client

OPTIONS = {"temperature": 0, "seed": 42, "max_tokens": 5}


def handler(event, context):
    ai_client.generate("One.", **OPTIONS)
    ai_client.chat([{"role": "user", "content": "Two."}], **OPTIONS)
    list(ai_client.generate("Three.", stream=True, **OPTIONS))
'''


def events_of(job) -> list[tuple[str, dict]]:
    return [(event.kind, event.data) for event in event_store().read(str(job.pk), after=None, wait=0)]


def calls_and_usage(job) -> tuple[list[dict], list[dict]]:
    events = events_of(job)
    return ([data for kind, data in events if kind == "llm_call"], [data for kind, data in events if kind == "usage"])


def test_each_call_starts_then_ends_with_the_tokens_the_ledger_recorded(run_script, each_node):
    job = run_script(THREE_CALLS)

    calls, usages = calls_and_usage(job)
    # Each call's receipt is told once its ledger row is written, after its end; the rest keep their order.
    assert [(c["call"], c["phase"]) for c in calls if c["phase"] != "receipt"] == [
        (1, "start"), (1, "end"), (2, "start"), (2, "end"), (3, "start"), (3, "end")]
    assert sorted(c["call"] for c in calls if c["phase"] == "receipt") == [1, 2, 3]
    ends = [c for c in calls if c["phase"] == "end"]
    rows = list(LLMCall.objects.filter(job=job).order_by("created_at", "id"))
    assert [(e["endpoint"], e["streamed"], e["promptTokens"], e["completionTokens"], e["estimated"]) for e in ends] == [
        (row.endpoint, row.streamed, row.prompt_tokens, row.completion_tokens, False) for row in rows]
    # One totals event when the job starts, then one after each call; the last is the ledger's.
    assert [u["llmCalls"] for u in usages] == [0, 1, 2, 3]
    ledger = ledger_totals(str(job.pk))
    assert (usages[-1]["promptTokens"], usages[-1]["completionTokens"], usages[-1]["unmeteredCalls"]) == (
        ledger["prompt_tokens"], ledger["completion_tokens"], ledger["unmetered_calls"])


def test_a_call_whose_counts_the_node_did_not_report_ends_with_the_estimate_the_ledger_billed(run_script,
                                                                                               node_without_counts):
    job = run_script(THREE_CALLS, job_budget=5000)

    calls, usages = calls_and_usage(job)
    ends = [c for c in calls if c["phase"] == "end"]
    rows = list(LLMCall.objects.filter(job=job).order_by("created_at", "id"))
    assert len(ends) == len(rows) == 3
    assert [(e["promptTokens"], e["completionTokens"], e["estimated"]) for e in ends] == [
        (row.prompt_tokens, row.completion_tokens, True) for row in rows]
    assert all(row.estimated and row.prompt_tokens > 0 for row in rows)  # delivered text is never billed as zero
    assert [u["estimatedCalls"] for u in usages] == [0, 1, 2, 3]
    ledger = ledger_totals(str(job.pk))
    assert (usages[-1]["promptTokens"], usages[-1]["completionTokens"], usages[-1]["unmeteredCalls"]) == (
        ledger["prompt_tokens"], ledger["completion_tokens"], 0)
    # The budget counts the estimates down like reported counts.
    assert usages[-1]["remainingTokens"] == 5000 - ledger["prompt_tokens"] - ledger["completion_tokens"]


def test_the_remaining_budget_goes_down_with_each_call(run_script, node):
    job = run_script(THREE_CALLS, job_budget=5000)

    _, usages = calls_and_usage(job)
    remaining = [u["remainingTokens"] for u in usages]
    assert remaining[0] == 5000 and remaining == sorted(remaining, reverse=True) and len(set(remaining)) == 4
    assert remaining[-1] == 5000 - job.prompt_tokens - job.completion_tokens
