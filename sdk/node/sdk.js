"use strict";
/**
 * Helpers for a job's script: its context, its input and its output (the Node twin of sdk/sdk.py). Node's
 * standard library only.
 *
 *     const sdk = require("sdk");
 *     const event = sdk.getInput();
 *     sdk.returnOutput({answer: 42});
 */
const fs = require("fs");

const UNSET = Symbol("unset");
let output = UNSET;

/** Who and what this job is: ids, the model it may use, and where it may write. */
function getContext() {
  return {
    jobId: process.env.JOB_ID || "",
    functionId: process.env.FUNCTION_ID || "",
    modelId: process.env.LLM_MODEL || "",
    aiEndpoint: process.env.AI_ENDPOINT || "",
    outputDir: process.env.OUTPUT_DIR || "/job/out",
  };
}

/** The job's inputData, decoded from PAYLOAD, or from PAYLOAD_FILE when it was too large for the environment. */
function getInput() {
  const path = process.env.PAYLOAD_FILE;
  if (path) return JSON.parse(fs.readFileSync(path, "utf8"));
  const raw = process.env.PAYLOAD;
  return raw === undefined ? null : JSON.parse(raw);
}

/** Set the job's result (JSON). A value a handler returns (other than undefined) takes precedence. */
function returnOutput(value) {
  output = value;
}

function hasOutput() {
  return output !== UNSET;
}

function getOutput() {
  return output === UNSET ? null : output;
}

module.exports = {getContext, getInput, returnOutput, hasOutput, getOutput};
