"use strict";
/**
 * Entry point of a node job container (the Node twin of sdk/runner.py): runs the user's index.js (or main.js)
 * under the same container contract.
 *
 * - A module exporting `handler(event, context)` (or `main`, or a function as the module itself), async or not:
 *   it is called with the job's input; the value it returns or resolves to (or `sdk.returnOutput(...)`) is the
 *   result, reported as soon as it settles (timers it left running are not waited for).
 * - Any other module is a plain script: the result is what it passed to `sdk.returnOutput`, reported once the
 *   event loop has nothing left to do.
 * The result and, on failure, the error are posted to the gateway's result channel (POST /_job/result on the
 * mounted socket, never an address from the environment); the stack goes to stderr. The exit code is 0, or 1 for an
 * error, or the script's own `process.exit(code)` / `process.exitCode`.
 */
const fs = require("fs");
const http = require("http");
const path = require("path");
const childProcess = require("child_process");

const sdk = require("./sdk");

const CODE_DIR = process.env.CODE_DIR || "/job/code";
const ENTRY_FILES = ["index.js", "main.js"];
const ENTRY_NAMES = ["handler", "main"];
const GATEWAY_SOCKET = "/run/ainode/gateway.sock";
const POST_RESULT = "--post-result";

let reported = false;

function peakMemoryBytes() {
  return process.resourceUsage().maxRSS * 1024;  // maxRSS is in kilobytes
}

/** The report's body; a result that is not JSON (a BigInt, a cycle) becomes the error ResultNotJSON. */
function reportBody(result, error) {
  try {
    const value = result === undefined ? null : result;
    return {body: JSON.stringify({result: value, error, peakMemoryBytes: peakMemoryBytes()}), isJson: true};
  } catch (err) {
    console.error(`[runtime] the result is not JSON: ${err.message}`);
    const notJson = {type: "ResultNotJSON", message: String(err.message)};
    return {body: JSON.stringify({result: null, error: notJson, peakMemoryBytes: peakMemoryBytes()}), isJson: false};
  }
}

/** POST `body` to the result channel; resolves with the answer's status and text (rejects when unreachable). */
function post(body) {
  return new Promise((resolve, reject) => {
    const request = http.request({socketPath: GATEWAY_SOCKET, method: "POST", path: "/_job/result",
                                  headers: {"Content-Type": "application/json", Connection: "close",
                                            "Content-Length": Buffer.byteLength(body)}}, (response) => {
      const chunks = [];
      response.on("data", (chunk) => chunks.push(chunk));
      response.on("end", () => resolve({status: response.statusCode, text: Buffer.concat(chunks).toString()}));
      response.on("error", reject);
    });
    request.setTimeout(30000, () => request.destroy(new Error("no answer within 30 s")));
    request.on("error", reject);
    request.end(body);
  });
}

async function postAndLog(body) {
  try {
    const answer = await post(body);
    if (answer.status !== 200) console.error(`[runtime] the result was refused: ${answer.text}`);
  } catch (err) {
    console.error(`[runtime] could not report the result: ${err.message}`);
  }
}

function errorOf(thrown) {
  const isError = thrown instanceof Error;
  return {type: isError ? thrown.name : typeof thrown,
          message: String(isError ? thrown.message : thrown).slice(0, 2000)};
}

/** Resolves once what was written to `stream` before has left the process (writes to a pipe may be queued). */
function drained(stream) {
  return new Promise((resolve) => stream.write("", () => resolve()));
}

/** Report the job's end once, then exit with `exitCode` (1 when the result is not JSON) once the output is out. */
async function finish(result, error, exitCode) {
  if (reported) return;
  reported = true;
  const {body, isJson} = reportBody(result, error);
  await postAndLog(body);
  await Promise.all([drained(process.stdout), drained(process.stderr)]);
  process.exit(!isJson && exitCode === 0 ? 1 : exitCode);
}

/**
 * The script left by `process.exit()` (or the loop ended with nothing reported): an event handler may not wait, so
 * the report is posted by a child of this runtime, synchronously.
 */
function reportOnExit(code) {
  if (reported) return;
  reported = true;
  const error = code === 0 ? null : {type: "Exit", message: `The script exited with ${code}.`};
  const {body} = reportBody(code === 0 ? sdk.getOutput() : null, error);
  childProcess.spawnSync(process.execPath, [__filename, POST_RESULT], {input: body, stdio: ["pipe", "inherit", "inherit"],
                                                                        timeout: 30000});
}

function entryFile() {
  return ENTRY_FILES.map((name) => path.join(CODE_DIR, name)).find((file) => fs.existsSync(file))
    || path.join(CODE_DIR, ENTRY_FILES[0]);
}

function entryFunction(exported) {
  if (typeof exported === "function") return exported;
  const name = ENTRY_NAMES.find((candidate) => exported && typeof exported[candidate] === "function");
  return name === undefined ? null : exported[name];
}

/** The script loaded and, for a handler, run and reported; a plain script is reported when the loop ends. */
async function main() {
  process.on("uncaughtException", (err) => {
    console.error(err instanceof Error ? err.stack : err);
    finish(null, errorOf(err), 1);
  });
  process.on("exit", reportOnExit);
  const file = entryFile();
  process.argv = [process.argv[0], file];
  const event = sdk.getInput();
  const entry = entryFunction(require(file));
  if (entry === null) {
    // A plain script: its result is what it returned through the sdk once nothing is left to run.
    process.on("beforeExit", () => {
      const code = process.exitCode || 0;
      const error = code === 0 ? null : {type: "Exit", message: `The script exited with ${code}.`};
      finish(code === 0 ? sdk.getOutput() : null, error, code);
    });
    return;
  }
  process.on("beforeExit", () => {
    finish(null, {type: "HandlerNeverSettled", message: "The handler's promise never settled."}, 1);
  });
  const value = await entry(event, sdk.getContext());
  await finish(value !== undefined || !sdk.hasOutput() ? value : sdk.getOutput(), null, 0);
}

/** Run the job's script; whatever it throws or rejects with is reported as its error. */
function run() {
  main().catch((err) => {
    console.error(err instanceof Error ? err.stack : err);
    finish(null, errorOf(err), 1);
  });
}

if (require.main === module) {
  if (process.argv[2] === POST_RESULT) {
    // The child of `reportOnExit`: posts its standard input as the report.
    postAndLog(fs.readFileSync(0, "utf8"));
  } else {
    run();
  }
}

module.exports = {run};
