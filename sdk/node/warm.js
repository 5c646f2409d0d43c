"use strict";
/**
 * Entry point of a warm node job container (the Node twin of sdk/warm.py): wait for one job, then run it exactly as
 * runner.js would.
 *
 * The worker starts this container ahead of demand. The runtime loads the runner (and ai_client), then blocks on the
 * start FIFO in the slot's socket folder. When a job is claimed, the worker puts its code and input in the slot,
 * binds its gateway's socket, and writes the job's environment (one JSON object on one line) to the FIFO; the
 * runtime takes it, becomes that job, and exits with the script. The container serves this one job.
 */
const fs = require("fs");

const runner = require("./runner");
require("./ai_client");

const START_FIFO = process.env.AINODE_START_FIFO || "/run/ainode/start";

/**
 * Block until the worker writes the job's environment. The FIFO is opened for reading and writing, so that the
 * worker's readiness probe (an open and close with nothing written) never ends the read.
 */
function waitForJob() {
  const fd = fs.openSync(START_FIFO, fs.constants.O_RDWR);
  const buffer = Buffer.alloc(65536);
  let data = Buffer.alloc(0);
  while (data.length === 0 || data[data.length - 1] !== 0x0a) {
    const count = fs.readSync(fd, buffer, 0, buffer.length, null);
    data = Buffer.concat([data, buffer.subarray(0, count)]);
  }
  fs.closeSync(fd);
  const env = JSON.parse(data.toString("utf8"));
  if (env === null || typeof env !== "object" || Array.isArray(env)) {
    console.error("[runtime] the start signal is not a JSON object");
    process.exit(1);
  }
  return env;
}

/**
 * Load the dependency layer's top-level packages (comma-separated `names`) while no job is here yet, as a job of
 * this profile would load them anyway. One that fails to load here is left for the job to load, and fail on.
 */
function preload(names) {
  for (const name of names.split(",").filter(Boolean)) {
    try {
      require(name);
    } catch (err) {
      // the job's own require reports it
    }
  }
}

preload(process.env.AINODE_PRELOAD || "");
delete process.env.AINODE_PRELOAD;
const env = waitForJob();
delete process.env.AINODE_START_FIFO;
for (const [name, value] of Object.entries(env)) process.env[name] = String(value);
runner.run();
