"""A node job's model calls, through the Node ai_client (generate, chat, streams, usage) and as raw OpenAI and
Ollama HTTP over the job's socket, billed exactly as the node itself counted them; and the Node twins of the
hostile scripts that try to change their bill.

Real parts: the runtime image's Node, the job's gateway, the local AI node behind a recording proxy.
"""
from __future__ import annotations

from tests.metering.helpers import assert_billed_as_node_counted

# Small answers: a 135M model at temperature 0 with a fixed seed; tests assert counts and shapes, never words.
OPTIONS = "{temperature: 0, seed: 7, max_tokens: 8}"

SDK_CALLS = """
const ai = require("ai_client");

exports.handler = async (event, context) => {
  const text = await ai.generate("Say hello.", %(options)s);
  const reply = await ai.chat([{role: "user", content: "Name a colour."}], %(options)s);
  const pieces = [];
  for await (const piece of ai.generate("Count to three.", {...%(options)s, stream: true})) pieces.push(piece);
  const chatPieces = [];
  for await (const piece of ai.chat([{role: "user", content: "Hi"}], {...%(options)s, stream: true})) {
    chatPieces.push(piece);
  }
  return {types: [typeof text, typeof reply], streamed: [pieces.length > 0, chatPieces.length > 0],
          usage: await ai.usage(), models: await ai.listModels(), model: context.modelId};
};
""" % {"options": OPTIONS}


def test_the_node_sdks_calls_are_billed_as_the_node_counted_them(run_script, each_node, model_id):
    job = run_script(SDK_CALLS, runtime="node")

    assert_billed_as_node_counted(job, each_node)
    assert job.llm_calls == 4
    assert job.result["types"] == ["string", "string"]
    assert job.result["streamed"] == [True, True]
    assert job.result["model"] == model_id
    assert model_id in job.result["models"]
    # What the script was told it spent is what it was billed: usage() answers from the job's meter.
    usage = job.result["usage"]
    assert (usage["promptTokens"], usage["completionTokens"], usage["llmCalls"]) == (
        job.prompt_tokens, job.completion_tokens, job.llm_calls)


RAW_CALLS = """
const http = require("http");

function send(method, path, body) {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const request = http.request({socketPath: process.env.AI_ENDPOINT.slice("unix://".length), method, path,
                                  headers: {"Content-Type": "application/json",
                                            "Content-Length": Buffer.byteLength(data)}}, (response) => {
      let text = "";
      response.setEncoding("utf8");
      response.on("data", (chunk) => { text += chunk; });
      response.on("end", () => resolve([response.statusCode, text]));
    });
    request.on("error", reject);
    request.end(data);
  });
}

exports.handler = async (event, context) => {
  const model = context.modelId;
  const openai = await send("POST", "/v1/chat/completions", {
    model, messages: [{role: "user", content: "Hi"}], max_tokens: 8, temperature: 0, seed: 7});
  const streamed = await send("POST", "/v1/chat/completions", {
    model, messages: [{role: "user", content: "Hi"}], max_tokens: 8, temperature: 0, seed: 7, stream: true});
  const ollama = await send("POST", "/api/generate", {
    model, prompt: "Hi", stream: false, options: {num_predict: 8, temperature: 0, seed: 7}});
  return {statuses: [openai[0], streamed[0], ollama[0]],
          claimed: JSON.parse(openai[1]).usage, streamedDone: streamed[1].includes("[DONE]")};
};
"""


def test_raw_openai_and_ollama_http_from_node_is_billed_as_the_node_counted(run_script, node):
    job = run_script(RAW_CALLS, runtime="node")

    assert_billed_as_node_counted(job, node)
    assert job.result["statuses"] == [200, 200, 200]
    assert job.result["streamedDone"] is True
    assert job.llm_calls == 3


FORGERIES = """
const fs = require("fs");
const http = require("http");
const ai = require("ai_client");

const FAKE = {prompt_tokens: 0, completion_tokens: 0, llm_token_count: 0, promptTokens: 0, completionTokens: 0,
              total_tokens: 0, llmCalls: 0};

function post(path) {
  return new Promise((resolve) => {
    const data = JSON.stringify(FAKE);
    const request = http.request({socketPath: "/run/ainode/gateway.sock", method: "POST", path,
                                  headers: {"Content-Type": "application/json",
                                            "Content-Length": Buffer.byteLength(data)}},
                                 (response) => { response.resume(); resolve(response.statusCode); });
    request.on("error", (err) => resolve(err.code));
    request.end(data);
  });
}

exports.handler = async () => {
  const written = {};
  for (const path of ["/job/out/usage.json", "/tmp/usage.json", "/run/ainode/usage.json", "/job/code/usage.json",
                      "/opt/ainode/node/ai_client.js", "/opt/ainode/node/usage.json"]) {
    try {
      fs.writeFileSync(path, JSON.stringify(FAKE));
      written[path] = "written";
    } catch (err) {
      written[path] = err.code;
    }
  }
  await ai.generate("Hi", %(options)s);
  await ai.chat([{role: "user", content: "Hi"}], %(options)s);
  console.log(JSON.stringify({usage: FAKE}));  // an old-style usage line on stdout
  const posted = {"/_job/usage": await post("/_job/usage"), "/_job/ledger": await post("/_job/ledger")};
  return {written, posted, ...FAKE};
};
""" % {"options": OPTIONS}


def test_fake_usage_files_and_claims_from_node_do_not_change_the_bill(run_script, node):
    job = run_script(FORGERIES, runtime="node")

    assert_billed_as_node_counted(job, node)
    assert job.llm_calls == 2 and job.prompt_tokens > 0 and job.completion_tokens > 0
    written = job.result["written"]
    assert written["/job/code/usage.json"] != "written"
    assert written["/opt/ainode/node/ai_client.js"] != "written"
    assert written["/opt/ainode/node/usage.json"] != "written"
    assert written["/job/out/usage.json"] == "written"
    assert job.result["posted"] == {"/_job/usage": 404, "/_job/ledger": 404}


def test_another_model_is_refused_with_the_sdks_own_error(run_script, node):
    script = """
const ai = require("ai_client");
exports.handler = async () => {
  try {
    await ai.generate("Hi", {model: "not-this-one:1b", max_tokens: 4});
    return "called";
  } catch (err) {
    return [err.name, err.code, err.status, err instanceof ai.ModelNotAllowed, err instanceof ai.AIClientError];
  }
};
"""
    job = run_script(script, runtime="node")

    assert_billed_as_node_counted(job, node)
    assert job.result == ["ModelNotAllowed", "model_not_allowed", 403, True, True]
    assert node.answers == []
