"use strict";
/**
 * Call the job's language model from a script (the Node twin of sdk/ai_client.py). Node's standard library only;
 * `require("ai_client")` works in a job with nothing installed.
 *
 *     const ai = require("ai_client");
 *     const text = await ai.generate("Say hi", {temperature: 0});
 *     const reply = await ai.chat([{role: "user", content: "Hi"}]);
 *     for await (const piece of ai.generate("Count to 5", {stream: true})) process.stdout.write(piece);
 *     console.log(await ai.usage());   // the job's tokens so far, as the gateway metered them
 *
 * Inside a job, AI_ENDPOINT points at the job's gateway (a Unix socket) and LLM_MODEL names the job's model.
 * Outside a job, set AI_ENDPOINT to an Ollama-compatible node (http://127.0.0.1:11435) to develop a script locally.
 * Model options may be given among the call's options (temperature: 0, max_tokens: 50) or as Ollama's
 * `options: {...}`. Errors are AIClientError (with the gateway's `code` and HTTP `status`), BudgetExhausted or
 * ModelNotAllowed. Calls are retried with backoff on connection errors, 429 and 5xx, as the Python client does.
 */
const {DEFAULT_SOCKET, target} = require("./transport");

const DEFAULT_TIMEOUT = Number(process.env.AI_CLIENT_TIMEOUT || "120");
const RETRIES = parseInt(process.env.AI_CLIENT_RETRIES || "3", 10);
const RETRY_STATUSES = new Set([429, 500, 502, 503, 504]);
const OPTION_NAMES = {max_tokens: "num_predict", num_predict: "num_predict", temperature: "temperature",
                      seed: "seed", top_p: "top_p", top_k: "top_k", stop: "stop"};

/** A model call failed. `code` is the gateway's error code (e.g. model_not_allowed), `status` its HTTP status. */
class AIClientError extends Error {
  constructor(message, {code = "error", status = null} = {}) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.status = status;
  }
}

/** The job's token budget is spent. */
class BudgetExhausted extends AIClientError {}

/** The job may not use the model it asked for. */
class ModelNotAllowed extends AIClientError {}

const ERRORS = {budget_exhausted: BudgetExhausted, model_not_allowed: ModelNotAllowed};

function endpoint() {
  return process.env.AI_ENDPOINT || `unix://${DEFAULT_SOCKET}`;
}

function modelOf(model) {
  const chosen = model || process.env.LLM_MODEL;
  if (!chosen) throw new AIClientError("No model given and LLM_MODEL is not set.", {code: "no_model"});
  return chosen;
}

function optionsOf(options, extra) {
  const merged = {...(options || {})};
  for (const [name, value] of Object.entries(extra)) {
    if (!(name in OPTION_NAMES)) {
      throw new TypeError(`unknown option ${JSON.stringify(name)}; known: ${Object.keys(OPTION_NAMES).sort().join(", ")}`);
    }
    merged[OPTION_NAMES[name]] = value;
  }
  return merged;
}

function errorOf(status, body) {
  let message;
  let code = "error";
  try {
    const data = JSON.parse(body);
    message = String(data.error || data.detail || body.slice(0, 500));
    code = String(data.code || "error");
  } catch (err) {
    message = String(body).slice(0, 500);
  }
  return new (ERRORS[code] || AIClientError)(message, {code, status});
}

function sleep(seconds) {
  return new Promise((resolve) => setTimeout(resolve, seconds * 1000));
}

/** One request; resolves with the response. A timeout (sent, no answer) rejects with code `timeout`. */
function send(method, path, data, timeout) {
  return new Promise((resolve, reject) => {
    const {module, options, prefix} = target(endpoint());
    const headers = {"Content-Type": "application/json", Accept: "application/json"};
    if (data !== null) headers["Content-Length"] = data.length;
    const request = module.request({...options, method, path: prefix + path, headers}, resolve);
    request.setTimeout(timeout * 1000, () => {
      request.destroy(new AIClientError(`The model gateway did not answer within ${timeout} s.`, {code: "timeout"}));
    });
    request.on("error", reject);
    request.end(data === null ? undefined : data);
  });
}

/** The whole body of `response`; a broken or silent answer rejects with code unreachable or timeout. */
async function readAll(response) {
  const chunks = [];
  try {
    for await (const chunk of response) chunks.push(chunk);
  } catch (err) {
    if (err instanceof AIClientError) throw err;
    throw new AIClientError(`The answer broke off: ${err.message}`, {code: "unreachable"});
  }
  return Buffer.concat(chunks).toString("utf8");
}

/**
 * Send with retries (backoff with jitter) on connection errors, 429 and 5xx; POSTs too, since the gateway refuses a
 * call before the node starts it or meters whatever the node did. A call that was sent and then timed out is not
 * sent again (it may still be running on the node): it rejects with code `timeout`.
 */
async function request(method, path, body, timeout) {
  const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
  let lastError = null;
  for (let attempt = 0; attempt <= RETRIES; attempt++) {
    if (attempt) await sleep(Math.min(8, 0.25 * 2 ** (attempt - 1)) * (0.5 + Math.random()));
    let response;
    try {
      response = await send(method, path, data, timeout);
    } catch (err) {
      if (err instanceof AIClientError) throw err;
      lastError = new AIClientError(`Cannot reach the model gateway at ${endpoint()}: ${err.message}`,
                                    {code: "unreachable"});
      continue;
    }
    if (response.statusCode < 400) return response;
    const error = errorOf(response.statusCode, await readAll(response));
    if (!RETRY_STATUSES.has(response.statusCode)) throw error;
    lastError = error;
  }
  throw lastError;
}

async function json(method, path, body, timeout) {
  const text = await readAll(await request(method, path, body, timeout));
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new AIClientError(`The gateway sent invalid JSON: ${err.message}`, {code: "bad_response"});
  }
}

/** The events of a streamed answer (one JSON object a line), up to and including the one marked done. */
async function* events(path, body, timeout) {
  const response = await request("POST", path, body, timeout);
  response.setEncoding("utf8");
  let buffer = "";
  try {
    for await (const chunk of response) {
      buffer += chunk;
      let end;
      while ((end = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + 1);
        if (!line.trim()) continue;
        let event;
        try {
          event = JSON.parse(line);
        } catch (err) {
          throw new AIClientError("The gateway sent an invalid stream line.", {code: "bad_response"});
        }
        if ("error" in event) throw errorOf(502, line);
        yield event;
        if (event.done) return;
      }
    }
  } catch (err) {
    if (err instanceof AIClientError) throw err;
    throw new AIClientError(`The stream broke: ${err.message}`, {code: "unreachable"});
  } finally {
    response.destroy();
  }
  throw new AIClientError("The stream ended before its last event.", {code: "bad_response"});
}

/**
 * A call of `path` with the body `makeBody(parameters)`: a promise of the text picked from the answer, or with
 * `stream: true` an async iterator of the text pieces. The body is made when the call starts, so that a bad
 * argument rejects (or throws from the iterator) like any other failure of the call.
 */
function call(path, parameters, makeBody, pick) {
  const {stream = false, timeout = DEFAULT_TIMEOUT} = parameters;
  if (stream) {
    return (async function* pieces() {
      for await (const event of events(path, {...makeBody(), stream: true}, timeout)) yield pick(event);
    })();
  }
  return (async () => pick(await json("POST", path, {...makeBody(), stream: false}, timeout)))();
}

/**
 * The model's completion of `prompt` as text (a promise); with `stream: true`, an async iterator of text pieces.
 * As with Ollama, the prompt goes through the model's chat template (after `system` when given) unless `raw`.
 * Parameters: model, stream, system, raw, options, timeout (seconds), and model options (temperature, ...).
 */
function generate(prompt, parameters = {}) {
  const {model, stream, system, raw, options, timeout, ...keywords} = parameters;
  return call("/api/generate", {stream, timeout}, () => {
    const body = {model: modelOf(model), prompt, options: optionsOf(options, keywords)};
    if (system !== undefined) body.system = system;
    if (raw) body.raw = true;
    return body;
  }, (answer) => answer.response || "");
}

/** The model's reply to `messages` ([{role: "user", content: "..."}]) as text, or an async iterator of pieces. */
function chat(messages, parameters = {}) {
  const {model, stream, options, timeout, ...keywords} = parameters;
  return call("/api/chat", {stream, timeout},
              () => ({model: modelOf(model), messages, options: optionsOf(options, keywords)}),
              (answer) => (answer.message || {}).content || "");
}

/** The job's metered totals so far: promptTokens, completionTokens, totalTokens, llmCalls, remainingTokens. */
function usage() {
  return json("GET", "/_job/usage", undefined, 10);
}

/** The models this job may use. */
async function listModels() {
  return (await json("GET", "/api/tags", undefined, 10)).models.map((entry) => entry.name || entry.model);
}

module.exports = {AIClientError, BudgetExhausted, ModelNotAllowed, chat, generate, listModels, usage};
