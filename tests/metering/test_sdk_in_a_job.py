"""A job's script calls the real model with `ai_client`: every call is billed with the node's own counts.

Each test runs once with the node as kind openai (llama.cpp) and once as kind ollama (the Ollama front).
"""
from jobs.models import LLMCall
from tests.metering.helpers import assert_billed_as_node_counted

SDK_SCRIPT = '''
import ai_client

OPTIONS = {"temperature": 0, "seed": 42, "max_tokens": 6}


def handler(event, context):
    seen = {"usage": [ai_client.usage()]}
    seen["generate"] = ai_client.generate("Say hello.", **OPTIONS)
    seen["usage"].append(ai_client.usage())
    seen["chat"] = ai_client.chat([{"role": "user", "content": "Hi"}], **OPTIONS)
    seen["usage"].append(ai_client.usage())
    seen["generate_pieces"] = list(ai_client.generate("Count to three.", stream=True, **OPTIONS))
    seen["usage"].append(ai_client.usage())
    seen["chat_pieces"] = list(ai_client.chat([{"role": "user", "content": "Name a colour."}], stream=True,
                                              options={"temperature": 0, "seed": 42, "num_predict": 6}))
    seen["usage"].append(ai_client.usage())
    seen["models"] = ai_client.list_models()
    return seen
'''


def test_generate_and_chat_streamed_or_not_are_billed_with_the_nodes_counts(run_script, each_node, model_id):
    job = run_script(SDK_SCRIPT)

    assert_billed_as_node_counted(job, each_node)
    assert job.llm_calls == 4
    seen = job.result
    assert isinstance(seen["generate"], str) and isinstance(seen["chat"], str)
    for pieces in (seen["generate_pieces"], seen["chat_pieces"]):
        assert pieces and all(isinstance(piece, str) for piece in pieces)
    assert seen["models"] == [model_id]
    rows = list(LLMCall.objects.filter(job=job).order_by("created_at", "id"))
    assert [(row.endpoint, row.streamed) for row in rows] == [
        ("/api/generate", False), ("/api/chat", False), ("/api/generate", True), ("/api/chat", True)]
    # The gateway always asks the node for a stream, so that it knows what was generated whatever happens.
    assert [a.streamed for a in each_node.answers] == [True, True, True, True]
    # Every call asked the node for what the script asked (6 tokens), and the node never gave more.
    assert [a.requested_max_tokens for a in each_node.answers] == [6, 6, 6, 6]
    assert all(0 < a.completion_tokens <= 6 for a in each_node.answers)


def test_usage_shows_the_jobs_running_totals_as_the_node_counted_them(run_script, each_node):
    job = run_script(SDK_SCRIPT)

    assert_billed_as_node_counted(job, each_node)
    usages = job.result["usage"]
    assert usages[0] == {"promptTokens": 0, "completionTokens": 0, "totalTokens": 0, "llmCalls": 0,
                         "unmeteredCalls": 0, "estimatedCalls": 0, "tokenBudget": None, "remainingTokens": None}
    for calls_done, usage in enumerate(usages[1:], start=1):
        answers = each_node.answers[:calls_done]
        prompt = sum(a.prompt_tokens for a in answers)
        completion = sum(a.completion_tokens for a in answers)
        assert (usage["promptTokens"], usage["completionTokens"], usage["totalTokens"], usage["llmCalls"]) == (
            prompt, completion, prompt + completion, calls_done)
    assert usages[-1]["promptTokens"] == job.prompt_tokens
    assert usages[-1]["completionTokens"] == job.completion_tokens


def test_sdk_errors_carry_the_gateways_code_and_status(run_script, node):
    script = '''
import ai_client


def handler(event, context):
    caught = {}
    for name, call in {
        "other_model": lambda: ai_client.generate("Hi", model="someone-elses-model:70b", max_tokens=4),
        "other_model_chat": lambda: ai_client.chat([{"role": "user", "content": "Hi"}], model="gpt-4o"),
    }.items():
        try:
            call()
        except ai_client.AIClientError as exc:
            caught[name] = {"type": type(exc).__name__, "code": exc.code, "status": exc.status,
                            "is_model_not_allowed": isinstance(exc, ai_client.ModelNotAllowed)}
    try:
        ai_client.generate("Hi", temprature=0)
    except TypeError as exc:
        caught["typo"] = str(exc)
    return caught
'''
    job = run_script(script)

    assert_billed_as_node_counted(job, node)
    caught = job.result
    for name in ("other_model", "other_model_chat"):
        assert caught[name] == {"type": "ModelNotAllowed", "code": "model_not_allowed", "status": 403,
                                "is_model_not_allowed": True}
    assert "temprature" in caught["typo"]
    assert job.llm_calls == 0 and node.answers == []
