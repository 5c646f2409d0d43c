"""The hostile scripts of test_hostile_scripts.py and test_runner_faults.py, as Node scripts: the node runtime
gets the same container, so the same walls hold (network, file system, processes, memory, output).

Every check runs inside the real job container, on a cold container and on a pooled (warm) one. Network checks
never send traffic off this machine: they list the interfaces and try connections only to 127.0.0.1 (inside the
container that is its own loopback, where nothing listens).
"""
import time

import pytest

from jobs.models import Job
from jobs.runner import run_job
from tests.support.containers import job_containers
from tests.support.jobs import make_job

pytestmark = pytest.mark.usefixtures("served_models", "execution")


def run_node(account, code: str, **options) -> Job:
    job = make_job(account, code, runtime="node", **options)
    run_job(job.pk)
    return Job.objects.get(pk=job.pk)


def run_node_ok(account, code: str, **options) -> Job:
    job = run_node(account, code, **options)
    assert job.status == "succeeded", (job.error_code, job.error_message, job.stderr[-2000:])
    return job


NETWORK_PROBE = """
const fs = require("fs");
const net = require("net");

function connect(port) {
  return new Promise((resolve) => {
    const socket = net.connect({host: "127.0.0.1", port, timeout: 2000});
    socket.on("connect", () => { socket.destroy(); resolve("connected"); });
    socket.on("timeout", () => { socket.destroy(); resolve("timeout"); });
    socket.on("error", (err) => resolve(err.code));
  });
}

exports.handler = async () => {
  const attempts = {};
  for (const port of [80, 443, 2375, 5432, 5055, 6379]) attempts[port] = await connect(port);
  return {
    interfaces: fs.readdirSync("/sys/class/net").sort(),
    routes: fs.readFileSync("/proc/net/route", "utf8").split("\\n").slice(1).filter(Boolean),
    attempts,
    dockerSocket: fs.existsSync("/var/run/docker.sock") || fs.existsSync("/run/docker.sock"),
  };
};
"""


def test_a_node_script_has_no_network_but_its_own_loopback(alice, job_work_root):
    job = run_node_ok(alice, NETWORK_PROBE)
    assert job.result["interfaces"] == ["lo"]
    assert job.result["routes"] == []
    assert set(job.result["attempts"].values()) == {"ECONNREFUSED"}
    assert job.result["dockerSocket"] is False


FILESYSTEM_PROBE = """
const fs = require("fs");

function tryWrite(path) {
  try {
    fs.writeFileSync(path, "x");
    return "written";
  } catch (err) {
    return err.code;
  }
}

exports.handler = () => {
  const outside = ["/hacked", "/etc/hacked", "/usr/lib/hacked", "/root/hacked", "/var/tmp/hacked", "/job/hacked",
                   "/job/code/index.js", "/job/code/new.js", "/opt/ainode/node/ai_client.js",
                   "/opt/ainode/node/evil.js", "/run/ainode/hacked", "/dev/hacked", "/usr/bin/node"];
  const inside = ["/tmp/ok", process.env.OUTPUT_DIR + "/ok"];
  return {outside: Object.fromEntries(outside.map((path) => [path, tryWrite(path)])),
          inside: Object.fromEntries(inside.map((path) => [path, tryWrite(path)]))};
};
"""


def test_a_node_script_cannot_write_outside_tmp_and_its_output_dir(alice, job_work_root):
    job = run_node_ok(alice, FILESYSTEM_PROBE)
    outside = job.result["outside"]
    assert all(outcome in ("EROFS", "EACCES", "EPERM") for outcome in outside.values()), outside
    assert set(job.result["inside"].values()) == {"written"}


def test_a_node_script_cannot_execute_a_program_it_wrote_to_tmp(alice, job_work_root):
    code = """
const fs = require("fs");
const {spawnSync} = require("child_process");
exports.handler = () => {
  fs.copyFileSync("/bin/true", "/tmp/mytrue");
  fs.chmodSync("/tmp/mytrue", 0o755);
  const run = spawnSync("/tmp/mytrue");
  return run.error ? run.error.code : "executed";
};
"""
    job = run_node_ok(alice, code)
    assert job.result == "EACCES"


def test_the_number_of_node_processes_is_bounded(alice, job_work_root, settings):
    code = """
const {spawn} = require("child_process");
exports.handler = async () => {
  const children = [];
  let error = null;
  for (let i = 0; i < 10 * %d && error === null; i++) {
    const child = spawn("sleep", ["60"], {stdio: "ignore"});
    error = await new Promise((resolve) => {
      child.on("spawn", () => resolve(null));
      child.on("error", (err) => resolve(err.code));
    });
    if (error === null) children.push(child);
  }
  for (const child of children) child.kill("SIGKILL");
  return {children: children.length, error};
};
""" % settings.JOB_PIDS_LIMIT
    job = run_node_ok(alice, code, timeout_seconds=30)
    assert job.result["error"] == "EAGAIN"
    assert 0 < job.result["children"] < settings.JOB_PIDS_LIMIT


def test_a_node_fork_bomb_is_contained_and_the_job_still_ends(alice, job_work_root, docker_client):
    code = """
const {spawn} = require("child_process");
function bomb() {
  const child = spawn(process.execPath, [__filename], {stdio: "ignore"});
  child.on("error", () => setTimeout(bomb, 10));
  setImmediate(bomb);
}
bomb();
"""
    started = time.monotonic()
    job = run_node(alice, code, timeout_seconds=3)
    assert job.status == "timed_out"
    assert time.monotonic() - started < 30
    assert job_containers(docker_client, job.pk) == []
    follow_up = run_node_ok(alice, "exports.handler = () => 'fine';\n")
    assert follow_up.result == "fine"


def test_a_node_memory_hog_fails_with_out_of_memory(alice, job_work_root, docker_client):
    code = "const chunks = [];\nsetInterval(() => chunks.push(Buffer.alloc(8 << 20, 1)), 1);\n"
    job = run_node(alice, code, memory_mb=64, timeout_seconds=30)
    assert (job.status, job.error_code) == ("failed", "out_of_memory"), (job.exit_code, job.stderr[-2000:])
    assert "64 MB" in job.error_message
    assert job_containers(docker_client, job.pk) == []


def test_a_node_output_flood_is_capped_and_the_job_still_finishes(alice, job_work_root, settings):
    # A gigabyte, written as fast as the pipe takes it (a script that queues it all without waiting runs out of
    # buffers first, and fails on its own).
    code = """
const chunk = "x".repeat(65536);
exports.handler = async () => {
  for (let i = 0; i < 16384; i++) {
    if (!process.stdout.write(chunk)) await new Promise((resolve) => process.stdout.once("drain", resolve));
  }
  console.error("the end");
};
"""
    job = run_node(alice, code, timeout_seconds=120)
    assert job.status == "succeeded", (job.error_code, job.stderr[-500:])
    assert len(job.stdout.encode()) == settings.JOB_OUTPUT_LIMIT_BYTES
    assert job.stdout_truncated is True
    assert job.stderr == "the end\n"
