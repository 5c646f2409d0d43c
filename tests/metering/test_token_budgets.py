"""Token budgets, a function's and a job's: calls are capped to what is left, refused when nothing is, and the
job's tokens never pass the budget, even when a script fires many calls at once.
"""
import pytest

from jobs import services
from jobs.metering.ledger import ledger_totals
from jobs.metering.meter import prompt_bound
from jobs.models import Job, LLMCall
from jobs.runner import run_job
from tests.metering.helpers import RAW_HTTP, assert_billed_as_node_counted
from tests.support.accounts import as_json

SPEND_IT_ALL = '''
import ai_client


def main(event, context):
    calls = 0
    while True:
        try:
            ai_client.generate("Say hi.", temperature=0, seed=42, max_tokens=8)
            calls += 1
        except ai_client.BudgetExhausted as exc:
            refused = {"type": type(exc).__name__, "code": exc.code, "status": exc.status}
            break
    try:
        list(ai_client.generate("Say hi.", stream=True, max_tokens=8))  # the same prompt, streamed
        streamed = "answered"
    except ai_client.BudgetExhausted as exc:
        streamed = exc.code
    return {"calls": calls, "refused": refused, "streamed": streamed, "usage": ai_client.usage()}
'''

GENERATE_BOUND = prompt_bound(["Say hi."])  # what the gateway holds for the prompt of one such call


def _ledger_total(job: Job) -> int:
    totals = ledger_totals(str(job.pk))
    return totals["prompt_tokens"] + totals["completion_tokens"]


def _assert_spent_within(job: Job, node, budget: int) -> None:
    assert_billed_as_node_counted(job, node)
    assert job.token_budget == budget
    assert _ledger_total(job) == job.llm_token_count <= budget
    assert sum(a.prompt_tokens + a.completion_tokens for a in node.answers) <= budget


def test_a_functions_budget_is_spent_then_calls_are_refused_with_budget_exhausted(run_script, each_node):
    budget = 260
    job = run_script(SPEND_IT_ALL, function_budget=budget)

    _assert_spent_within(job, each_node, budget)
    seen = job.result
    assert seen["refused"] == {"type": "BudgetExhausted", "code": "budget_exhausted", "status": 402}
    assert seen["streamed"] == "budget_exhausted"
    assert seen["calls"] == job.llm_calls >= 1
    # The budget was used up: what is left cannot hold one more call's prompt.
    assert budget - job.llm_token_count < GENERATE_BOUND + 1
    assert seen["usage"]["tokenBudget"] == budget
    assert seen["usage"]["remainingTokens"] == budget - job.llm_token_count
    assert all(a.requested_max_tokens <= 8 for a in each_node.answers)


def test_a_jobs_budget_from_post_run_is_kept_and_the_smaller_budget_wins(transactional_db, job_work_root, alice,
                                                                         node, model_id):
    function = services.deploy_function(owner=alice.user, name="budgeted", code=SPEND_IT_ALL.encode(),
                                        timeout_seconds=90, token_budget=5000)
    body = {"functionId": str(function.pk), "modelId": model_id, "inputData": None, "tokenBudget": 150}
    response = alice.client.post("/run", body, format="json", HTTP_X_ASYNC="true")
    assert response.status_code == 202, response.content
    job_id = as_json(response)["jobId"]

    run_job(job_id)

    job = Job.objects.get(pk=job_id)
    _assert_spent_within(job, node, 150)
    assert job.result["refused"]["code"] == "budget_exhausted"
    status = as_json(alice.client.get(f"/status/{job_id}"))
    assert (status["tokenBudget"], status["promptTokens"], status["completionTokens"], status["llm_token_count"]) == (
        150, job.prompt_tokens, job.completion_tokens, job.llm_token_count)


def test_a_functions_smaller_budget_wins_over_a_jobs_larger_one(run_script, node):
    job = run_script(SPEND_IT_ALL, function_budget=120, job_budget=100_000)

    _assert_spent_within(job, node, 120)


def test_a_calls_output_is_capped_to_what_the_budget_has_left(run_script, each_node):
    script = '''
import ai_client


def main(event, context):
    ai_client.generate("Hi", temperature=0, seed=42, max_tokens=50)
'''
    budget = prompt_bound(["Hi"]) + 5  # room for the prompt's bound and five tokens of answer
    job = run_script(script, job_budget=budget)

    _assert_spent_within(job, each_node, budget)
    (first,) = each_node.answers
    # The node's tokenizer counts the prompt exactly where it has one (llama.cpp); elsewhere its bound is held.
    held_for_prompt = first.prompt_tokens if each_node.kind == "openai" else prompt_bound(["Hi"])
    assert first.requested_max_tokens == budget - held_for_prompt < 50
    assert first.completion_tokens <= budget - held_for_prompt
    assert LLMCall.objects.get(job=job).max_tokens_granted == budget - held_for_prompt


def test_a_budget_too_small_for_one_call_refuses_it_before_the_node_sees_it(run_script, node):
    job = run_script(SPEND_IT_ALL, job_budget=20)  # less than the templated prompt alone

    assert_billed_as_node_counted(job, node)
    assert job.result["calls"] == 0 and job.result["refused"]["code"] == "budget_exhausted"
    assert node.answers == [] and job.llm_calls == 0 and job.llm_token_count == 0


CONCURRENT = '''
import threading

import ai_client


def main(event, context):
    outcomes = []
    lock = threading.Lock()

    def call(n):
        try:
            if n % 2:
                ai_client.generate("Say hi.", temperature=0, seed=n, max_tokens=16)
            else:
                list(ai_client.chat([{"role": "user", "content": "Hi"}], stream=True, temperature=0, seed=n,
                                    max_tokens=16))
            outcome = "answered"
        except ai_client.AIClientError as exc:
            outcome = exc.code
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(event["threads"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(outcomes)
'''


@pytest.mark.timeout(180)
def test_many_concurrent_calls_never_overshoot_the_budget(run_script, each_node):
    budget = 400
    job = run_script(CONCURRENT, input_data={"threads": 16}, job_budget=budget)

    _assert_spent_within(job, each_node, budget)
    outcomes = job.result
    assert len(outcomes) == 16 and set(outcomes) == {"answered", "budget_exhausted"}
    assert outcomes.count("answered") == job.llm_calls


def test_unreported_counts_are_estimated_and_the_budget_still_holds(run_script, node_without_counts):
    """The node's counts never reach the gateway, so it counts the calls itself (the node's tokenizer, else an
    upper bound) and bills them as estimated; what the node really generated (the proxy saw it) stays within the
    budget."""
    budget = 300
    job = run_script(SPEND_IT_ALL, job_budget=budget)

    assert job.status == "succeeded", job.stderr
    assert job.result["refused"]["code"] == "budget_exhausted"
    calls = job.result["calls"]
    assert calls == job.llm_calls == job.estimated_calls == len(node_without_counts.answers) >= 1
    assert job.unmetered_calls == 0
    assert 0 < job.llm_token_count <= budget
    real = sum(a.prompt_tokens + a.completion_tokens for a in node_without_counts.answers)
    assert real <= budget
    if node_without_counts.kind == "ollama":  # upper bounds: never less than the truth
        assert job.llm_token_count >= real


def test_prompt_text_smuggled_outside_the_contents_is_refused(run_script, each_node):
    """The budget bounds a call's prompt by its contents; a chat template also writes each message's role into the
    prompt, so a role that is not one of the APIs' own would be prompt text the bound does not see."""
    script = '''
import ai_client


def main(event, context):
    try:
        ai_client.chat([{"role": "sea " * 300, "content": ""}], max_tokens=2)
        return "answered"
    except ai_client.AIClientError as exc:
        return [exc.status, exc.code]
'''
    job = run_script(script, job_budget=200)

    assert_billed_as_node_counted(job, each_node)
    assert job.result == [400, "invalid_request"]
    assert each_node.answers == []


SIXTEEN_GREEDY_CALLS = RAW_HTTP + '''
import threading


def main(event, context):
    outcomes = []

    def call(n):
        body = {"prompt": "Once upon a time", "max_tokens": 4096, "temperature": 0, "seed": n}
        status, _, payload = send("POST", "/v1/completions", body)  # OpenAI's completions: a raw prompt
        outcomes.append("answered" if status == 200 else json.loads(payload)["code"])

    threads = [threading.Thread(target=call, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(outcomes)
'''


@pytest.mark.timeout(240)
def test_concurrent_greedy_calls_wait_for_room_and_use_the_budget_without_passing_it(run_script, node):
    """Each call asks far more than the budget: the first is granted what is left after its exactly counted
    prompt, the others wait for it to settle instead of failing at once, and are refused only when what is settled
    leaves no room for their prompt and one token. (So at most one prompt's worth is left unused: a short raw
    prompt here.)"""
    budget = 200
    job = run_script(SIXTEEN_GREEDY_CALLS, job_budget=budget)

    _assert_spent_within(job, node, budget)
    outcomes = job.result
    assert len(outcomes) == 16 and set(outcomes) <= {"answered", "budget_exhausted"}
    assert outcomes.count("answered") == job.llm_calls >= 1
    assert 0.9 * budget <= job.llm_token_count <= budget
