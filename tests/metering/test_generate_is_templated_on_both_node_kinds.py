"""`/api/generate` and `ai_client.generate()` behave alike on both node kinds: like Ollama, the prompt goes through
the model's chat template (one user message, after `system` when given) unless the caller asks for `raw: true`.
On an OpenAI-kind node (llama.cpp) a templated generate is a chat completion; a raw one (and OpenAI's own
/v1/completions) a plain completion.
"""
from jobs.models import LLMCall
from tests.metering.helpers import RAW_HTTP, assert_billed_as_node_counted

SCRIPT = RAW_HTTP + '''
import ai_client

OPTIONS = {"num_predict": 3, "temperature": 0, "seed": 42}
SYSTEM = "You answer in one word."
CALLS = [
    ("generate", "/api/generate", {"prompt": "Say hi.", "stream": False, "options": OPTIONS}),
    ("chat", "/api/chat", {"messages": [{"role": "user", "content": "Say hi."}], "stream": False, "options": OPTIONS}),
    ("generate_system", "/api/generate", {"prompt": "Say hi.", "system": SYSTEM, "stream": False,
                                           "options": OPTIONS}),
    ("chat_system", "/api/chat", {"messages": [{"role": "system", "content": SYSTEM},
                                               {"role": "user", "content": "Say hi."}], "stream": False,
                                  "options": OPTIONS}),
    ("generate_raw", "/api/generate", {"prompt": "Say hi.", "raw": True, "stream": False, "options": OPTIONS}),
    ("completions", "/v1/completions", {"prompt": "Say hi.", "max_tokens": 3, "temperature": 0}),
    ("generate_not_a_flag", "/api/generate", {"prompt": "Say hi.", "raw": "yes", "stream": False}),
]


def main(event, context):
    prompts = {}
    for name, path, body in CALLS:
        status, _, payload = send("POST", path, body)
        answer = json.loads(payload)
        prompts[name] = answer.get("prompt_eval_count") or (answer.get("usage") or {}).get("prompt_tokens") or \\
            [status, answer.get("code")]
    ai_client.generate("Say hi.", max_tokens=3, temperature=0)
    prompts["sdk"] = ai_client.usage()["promptTokens"] - sum(v for v in prompts.values() if isinstance(v, int))
    return prompts
'''


def test_a_generate_is_templated_like_a_chat_unless_raw_on_both_node_kinds(run_script, each_node):
    job = run_script(SCRIPT)

    assert_billed_as_node_counted(job, each_node)
    prompts = job.result
    # The same words cost the same prompt tokens as a generate and as a chat: both went through the template.
    assert prompts["generate"] == prompts["chat"] == prompts["sdk"]
    assert prompts["generate_system"] == prompts["chat_system"]
    # Raw text skips the template (and its role markers): far fewer tokens.
    assert prompts["generate_raw"] == prompts["completions"] < prompts["generate"] - 4
    assert prompts["generate_not_a_flag"] == [400, "invalid_request"]
    if each_node.kind == "openai":
        assert [a.path for a in each_node.answers] == ["/v1/chat/completions"] * 4 + ["/v1/completions"] * 2 + [
            "/v1/chat/completions"]
    assert LLMCall.objects.filter(job=job).count() == 7
