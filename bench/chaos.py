"""Faults on real parts under a steady load of jobs that call the model, and what each fault costs.

    .venv/bin/python bench/chaos.py [--faults postgres,sqs,disk,node,engine] [--rate 2] [--before 5] [--down 5]
                                    [--after 10] [--drain 240]

It starts a production-shaped stack of its own in a throw-away folder: a PostgreSQL server of its own
(tests/support/private_postgres.py), moto_server for SQS, the dev AI node (llama.cpp, whose /metrics counts the
tokens it generated), gunicorn (2 processes) and one Celery worker (2 processes, with the outbox relay), the jobs'
work root on a 64 MB tmpfs. The Docker engine is the machine's: the engine fault kills the real dockerd and starts
it again with scripts/services.sh (run it when nothing else uses the engine).

For each fault in turn: a steady load of asynchronous jobs (`--rate` a second, each making one 4-token call to the
model) for `--before` s; the fault; `--down` s later the dependency is back; the load goes on for `--after` s; then
it waits (at most `--drain` s) for every admitted job to end. Per fault it prints: submits and how they were
answered, jobs admitted, succeeded, failed by code, delivered more than once, run twice (more than one answered
call on the ledger: each run makes one), lost (admitted but never ended), stuck (queued or running at the end), the seconds from
the dependency answering again to the first job that ended well after it, and the completion tokens billed against
the node's own counter over the fault's window. Figures only; nothing is asserted.

The faults: `postgres` SIGKILL of the postmaster, started again; `sqs` SIGKILL of moto_server, started again on
its port (a new moto has lost its queues, which real SQS never does: the bench makes the job queue again); `disk`
the work root filled to the last byte, then emptied; `node` SIGKILL of the AI node, started again on its ports;
`engine` SIGKILL of dockerd, started again.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.production_stack import MODEL, REPO_ROOT, TERMINAL, Stack, http  # noqa: E402 - the root goes on the path first

ONE_CALL = ("import ai_client\n"
            "def handler(event, context):\n"
            "    ai_client.generate('Count from one to ten.', max_tokens=4, temperature=0, seed=1)\n"
            "    return event\n")
FAULTS = ("postgres", "sqs", "disk", "node", "engine")
WORK_ROOT_MB = 64


# --- the faults: each injects, then brings the dependency back and returns when it answers ----------------------

def fault_postgres(stack: Stack, down: float) -> None:
    stack.database.crash()
    time.sleep(down)
    stack.database.start()


def fault_sqs(stack: Stack, down: float) -> None:
    stack.moto.kill()
    time.sleep(down)
    stack.moto.start()
    stack.make_job_queue()


def fault_disk(stack: Stack, down: float) -> None:
    filler = stack.work_root / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", f"count={WORK_ROOT_MB * 2}"],
                   capture_output=True)
    time.sleep(down)
    filler.unlink()


def fault_node(stack: Stack, down: float) -> None:
    stack.node.kill()
    time.sleep(down)
    stack.node.start()


def fault_engine(stack: Stack, down: float) -> None:
    os.kill(int(Path("/var/run/docker.pid").read_text()), signal.SIGKILL)
    time.sleep(down)
    subprocess.run(["bash", "scripts/services.sh", "docker"], cwd=REPO_ROOT, check=True, capture_output=True)


# --- the load and the report -------------------------------------------------------------------------------------

class Load:
    """Submits an asynchronous job every 1/`rate` s from its own thread until stopped."""

    def __init__(self, stack: Stack, key: str, function_id: str, rate: float) -> None:
        self.stack, self.key, self.function_id, self.rate = stack, key, function_id, rate
        self.answers: list[tuple[int, object]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            started = time.monotonic()
            self.answers.append(http("POST", self.stack.base + "/run", key=self.key, timeout=15,
                                     body={"functionId": self.function_id, "modelId": MODEL, "inputData": n},
                                     headers={"X-Async": "true"}))
            n += 1
            self._stop.wait(max(0.0, 1 / self.rate - (time.monotonic() - started)))


def run_fault(stack: Stack, key: str, function_id: str, name: str, args: argparse.Namespace) -> dict:
    generated_before = stack.node.generated()
    load = Load(stack, key, function_id, args.rate).start()
    time.sleep(args.before)
    globals()[f"fault_{name}"](stack, args.down)
    back_at = datetime.now(timezone.utc)
    time.sleep(args.after)
    load.stop()
    admitted = [body["jobId"] for status, body in load.answers if status == 202]
    refused = Counter(f"{status} {body.get('code', '') if isinstance(body, dict) else ''}".strip()
                      for status, body in load.answers if status != 202)
    deadline = time.monotonic() + args.drain
    while time.monotonic() < deadline:
        ended = stack.database.rows("SELECT count(*) FROM jobs_job WHERE id = ANY(%s::uuid[]) AND status = ANY(%s)",
                           (admitted, list(TERMINAL)))[0][0]
        if ended == len(admitted):
            break
        time.sleep(1)
    by_status = Counter({(status, code): count for status, code, count in stack.database.rows(
        "SELECT status, error_code, count(*) FROM jobs_job WHERE id = ANY(%s::uuid[]) GROUP BY 1, 2", (admitted,))})
    known = sum(by_status.values())
    retried = stack.database.rows("SELECT count(*) FROM jobs_job WHERE id = ANY(%s::uuid[]) AND deliveries > 1",
                         (admitted,))[0][0]
    # A run makes one call that answers (the SDK may try again a call that failed: one row each).
    twice = stack.database.rows("SELECT count(*) FROM (SELECT job_id FROM jobs_llmcall WHERE job_id = ANY(%s::uuid[]) "
                       "AND status = 'ok' GROUP BY job_id HAVING count(*) > 1) AS more", (admitted,))[0][0]
    first_end = stack.database.rows("SELECT min(finished_at) FROM jobs_job WHERE id = ANY(%s::uuid[]) "
                           "AND status = 'succeeded' AND finished_at > %s", (admitted, back_at))[0][0]
    billed = stack.database.rows("SELECT coalesce(sum(completion_tokens), 0) FROM jobs_llmcall "
                        "WHERE job_id = ANY(%s::uuid[])", (admitted,))[0][0]
    return {
        "fault": name, "submits": len(load.answers), "refused": dict(refused), "admitted": len(admitted),
        "succeeded": by_status.get(("succeeded", ""), 0),
        "failed": {f"{status} {code}".strip(): count for (status, code), count in by_status.items()
                   if status != "succeeded" and status in TERMINAL},
        "retried": retried, "run_twice": twice, "lost": len(admitted) - known,
        "stuck": sum(count for (status, _), count in by_status.items() if status not in TERMINAL),
        "recovery_s": (first_end - back_at).total_seconds() if first_end else None,
        "tokens_billed": billed, "tokens_node": stack.node.generated() - generated_before,
    }


def print_table(results: list[dict]) -> None:
    print("\n| fault | submits (refused) | admitted | succeeded | failed | retried | run twice | lost | stuck "
          "| recovery | completion tokens billed / node |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        refused = ", ".join(f"{k}: {v}" for k, v in r["refused"].items()) or "none"
        failed = ", ".join(f"{k}: {v}" for k, v in r["failed"].items()) or "0"
        recovery = f"{r['recovery_s']:.1f} s" if r["recovery_s"] is not None else "none"
        print(f"| {r['fault']} | {r['submits']} ({refused}) | {r['admitted']} | {r['succeeded']} | {failed} "
              f"| {r['retried']} | {r['run_twice']} | {r['lost']} | {r['stuck']} | {recovery} "
              f"| {r['tokens_billed']} / {r['tokens_node']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", default="postgres,sqs,disk,node,engine")
    parser.add_argument("--rate", type=float, default=2.0, help="jobs submitted a second")
    parser.add_argument("--before", type=float, default=5.0, help="seconds of load before the fault")
    parser.add_argument("--down", type=float, default=5.0, help="seconds the dependency is down")
    parser.add_argument("--after", type=float, default=10.0, help="seconds of load once it is back")
    parser.add_argument("--drain", type=float, default=240.0, help="the longest wait for the jobs to end")
    args = parser.parse_args()
    faults = [name for name in args.faults.split(",") if name]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise SystemExit(f"unknown faults: {', '.join(sorted(unknown))} (known: {', '.join(FAULTS)})")
    if os.geteuid() != 0:
        raise SystemExit("run as root: the bench mounts a tmpfs and, for the engine fault, kills dockerd")
    folder = Path(tempfile.mkdtemp(prefix="ainode-chaos-"))
    stack = Stack(folder, work_root_mb=WORK_ROOT_MB)
    results = []
    try:
        [key] = stack.start("chaos")
        status, function = http("POST", stack.base + "/api/v1/functions/", key=key,
                                body={"name": "chaos", "code": ONE_CALL})
        if status != 201:
            raise SystemExit(f"deploy answered {status}: {function}")
        for name in faults:
            print(f"fault {name}: {args.before:.0f} s of load, {args.down:.0f} s down, {args.after:.0f} s after",
                  flush=True)
            result = run_fault(stack, key, function["functionId"], name, args)
            print("  " + json.dumps(result), flush=True)
            results.append(result)
    finally:
        stack.stop()
        print(f"(logs in {folder})")
    print_table(results)


if __name__ == "__main__":
    main()
