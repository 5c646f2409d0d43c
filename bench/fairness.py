"""Fair share between users on the real stack, side by side with first come, first served, in one run.

    .venv/bin/python bench/fairness.py [--flood 300] [--late 20] [--late-after 5] [--alone 60] [--weighted 200]
                                       [--window 60] [--workers 2]

The stack is bench/production_stack.py's: a PostgreSQL of its own, moto_server for SQS, the dev AI node, gunicorn,
and one Celery worker of `--workers` processes. Every job makes one model call of up to 32 tokens. Time to result is
a job's end less its admission, from its row. In order:

1. fair share on: user B alone submits `--late` jobs: B's p50 and p95;
2. user A submits `--flood` jobs, and `--late-after` s later B submits `--late`: B's p50 and p95, against 1;
3. weights 2:1 (A 2, B 1), both submit `--weighted` jobs at once: the tokens of the jobs that end in `--window`
   seconds (after 10 s of warm-up), per user;
4. A alone submits `--alone` jobs: jobs/s and tokens/s from the first admission to the last end;
5. fair share off (FAIR_SHARE=false: every job is sent at once, first come first served): 4 again, then 2 again.

Each step has users of its own (A and B are new users in each), so that no step starts with service counted in
an earlier one. Unfinished jobs of a step are cancelled before the next. Figures only; nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.production_stack import MODEL, TERMINAL, Stack, http  # noqa: E402 - the root goes on the path first

ONE_CALL = ("import ai_client\n"
            "def handler(event, context):\n"
            "    ai_client.generate('Tell me about the sea.', max_tokens=32, temperature=0, seed=1)\n"
            "    return event\n")
SUBMIT_THREADS = 4
WARM_UP_SECONDS = 10.0


class Bench:
    def __init__(self, stack: Stack, keys: dict[str, str]) -> None:
        self.stack, self.keys = stack, keys
        self.functions = {user: self.deploy(user) for user in keys}

    def deploy(self, user: str) -> str:
        status, body = http("POST", self.stack.base + "/api/v1/functions/", key=self.keys[user],
                            body={"name": "fair", "code": ONE_CALL})
        if status != 201:
            raise SystemExit(f"deploy answered {status}: {body}")
        return body["functionId"]

    def submit(self, user: str, n: int) -> list[str]:
        """`n` asynchronous jobs of `user`, submitted from a few threads; their ids, in order of admission."""
        def one(i: int) -> tuple[float, str]:
            status, body = http("POST", self.stack.base + "/run", key=self.keys[user], headers={"X-Async": "true"},
                                body={"functionId": self.functions[user], "modelId": MODEL, "inputData": i})
            if status != 202:
                raise SystemExit(f"submit answered {status}: {body}")
            return time.monotonic(), body["jobId"]

        with ThreadPoolExecutor(SUBMIT_THREADS) as pool:
            return [job_id for _, job_id in sorted(pool.map(one, range(n)))]

    def ended(self, ids: list[str]) -> int:
        return self.rows("SELECT count(*) FROM jobs_job WHERE id = ANY(%s::uuid[]) AND status = ANY(%s)",
                         ids, list(TERMINAL))[0][0]

    def wait(self, ids: list[str], timeout: float = 1800) -> None:
        deadline = time.monotonic() + timeout
        while self.ended(ids) < len(ids):
            if time.monotonic() > deadline:
                raise SystemExit(f"{len(ids) - self.ended(ids)} jobs did not end in {timeout:.0f} s")
            time.sleep(0.5)

    def cancel_rest(self, user: str, ids: list[str]) -> None:
        """Cancel what is left of `ids`, and wait for the running ones to end."""
        for (job_id,) in self.rows("SELECT id::text FROM jobs_job WHERE id = ANY(%s::uuid[]) AND status = 'queued'",
                                   ids):
            http("POST", f"{self.stack.base}/api/v1/jobs/{job_id}/cancel/", key=self.keys[user])
        self.wait(ids)

    def times_to_result(self, ids: list[str]) -> list[float]:
        return [float(row[0]) for row in self.rows(
            "SELECT extract(epoch FROM finished_at - created_at) FROM jobs_job WHERE id = ANY(%s::uuid[]) "
            "AND status = 'succeeded'", ids)]

    def throughput(self, ids: list[str]) -> dict:
        [(jobs, tokens, span)] = self.rows(
            "SELECT count(*), sum(prompt_tokens + completion_tokens), "
            "extract(epoch FROM max(finished_at) - min(created_at)) FROM jobs_job "
            "WHERE id = ANY(%s::uuid[]) AND status = 'succeeded'", ids)
        return {"jobs": jobs, "seconds": round(float(span), 1), "jobs_per_s": round(jobs / float(span), 3),
                "tokens_per_s": round(float(tokens) / float(span), 1)}

    def rows(self, sql: str, *params) -> list[tuple]:
        return self.stack.database.rows(sql, params)

    # --- the steps ---------------------------------------------------------------------------------------------

    def late_user(self, a: str, b: str, flood: int, late: int, late_after: float) -> dict:
        """User `a` floods, `b` comes `late_after` s later: b's times to result (b's alone when `flood` is 0)."""
        flooded: list[str] = []
        flooding = threading.Thread(target=lambda: flooded.extend(self.submit(a, flood)))
        started = time.monotonic()
        flooding.start()
        time.sleep(max(0.0, late_after - (time.monotonic() - started)) if flood else 0.0)
        late_ids = self.submit(b, late)
        self.wait(late_ids)
        flooding.join()
        self.cancel_rest(a, flooded)
        return percentiles(self.times_to_result(late_ids))

    def weighted(self, a: str, b: str, n: int, window: float) -> dict:
        """`a` with weight 2 and `b` with weight 1 submit `n` jobs each at once: the tokens each is served."""
        self.stack.manage("shell", "-c", "from accounts.models import Quota; from django.contrib.auth.models import "
                                         f"User; Quota.objects.create(user=User.objects.get(username='{a}'), "
                                         "share_weight=2.0)")
        ids: dict[str, list[str]] = {}
        with ThreadPoolExecutor(2) as pool:
            for user, submitted in zip("ab", pool.map(lambda user: self.submit(user, n), (a, b))):
                ids[user] = submitted
        [(since,)] = self.rows("SELECT max(created_at) FROM jobs_job WHERE id = ANY(%s::uuid[])", ids["a"] + ids["b"])
        time.sleep(WARM_UP_SECONDS + window)
        tokens = {user: self.rows(
            "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0), count(*) FROM jobs_job "
            "WHERE id = ANY(%s::uuid[]) AND finished_at > %s + make_interval(secs => %s) "
            "AND finished_at <= %s + make_interval(secs => %s)", ids[user], since, WARM_UP_SECONDS, since,
            WARM_UP_SECONDS + window)[0] for user in "ab"}
        for user, name in zip("ab", (a, b)):
            self.cancel_rest(name, ids[user])
        left = [user for user in "ab" if tokens[user][1] >= len(ids[user])]
        return {"tokens_a": int(tokens["a"][0]), "tokens_b": int(tokens["b"][0]), "jobs_a": tokens["a"][1],
                "jobs_b": tokens["b"][1], "ratio": round(int(tokens["a"][0]) / max(int(tokens["b"][0]), 1), 2),
                "backlog_ran_out": left}

    def alone(self, user: str, n: int) -> dict:
        ids = self.submit(user, n)
        self.wait(ids)
        return self.throughput(ids)


def percentiles(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"n": len(ordered), "p50": round(statistics.median(ordered), 2),
            "p95": round(ordered[max(0, round(0.95 * len(ordered)) - 1)], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", type=int, default=300, help="A's jobs in the flood")
    parser.add_argument("--late", type=int, default=20, help="B's jobs")
    parser.add_argument("--late-after", type=float, default=5.0, help="seconds from A's flood to B's jobs")
    parser.add_argument("--alone", type=int, default=60, help="A's jobs when alone (throughput)")
    parser.add_argument("--weighted", type=int, default=200, help="jobs of each user with weights 2:1")
    parser.add_argument("--window", type=float, default=60.0, help="seconds over which the weighted split counts")
    parser.add_argument("--workers", type=int, default=2, help="the worker's processes")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ainode-fairness-"))
    stack = Stack(folder, worker_processes=args.workers)
    results: dict[str, dict] = {}
    try:
        users = ["warm", "b0", "a1", "b1", "a2", "b2", "a3", "a4", "a5", "b5"]
        bench = Bench(stack, dict(zip(users, stack.start(*users))))
        bench.alone("warm", args.workers * 2)  # warm: the pool's containers, the node's cache
        steps = [
            ("fair: B alone", lambda: bench.late_user("", "b0", 0, args.late, 0)),
            ("fair: B after A's flood", lambda: bench.late_user("a1", "b1", args.flood, args.late, args.late_after)),
            ("fair: weights 2:1", lambda: bench.weighted("a2", "b2", args.weighted, args.window)),
            ("fair: A alone", lambda: bench.alone("a3", args.alone)),
            ("FIFO", lambda: (stack.stop_app(), stack.start_app(FAIR_SHARE="false"),
                              bench.alone("warm", args.workers * 2))),
            ("FIFO: A alone", lambda: bench.alone("a4", args.alone)),
            ("FIFO: B after A's flood", lambda: bench.late_user("a5", "b5", args.flood, args.late, args.late_after)),
        ]
        for name, step in steps:
            print(f"{name} ...", flush=True)
            result = step()
            if isinstance(result, dict):
                results[name] = result
                print("  " + json.dumps(result), flush=True)
    finally:
        stack.stop()
        print(f"(logs in {folder})")
    report(results)


def report(results: dict[str, dict]) -> None:
    alone, fair, fifo = (results.get(name) for name in ("fair: B alone", "fair: B after A's flood",
                                                        "FIFO: B after A's flood"))
    print("\n| B's time to result | p50 | p95 | p50 / alone | p95 / alone |")
    print("|---|---|---|---|---|")
    for name, r in (("alone", alone), ("after A's flood, fair share", fair), ("after A's flood, FIFO", fifo)):
        if r and alone:
            print(f"| {name} | {r['p50']:.1f} s | {r['p95']:.1f} s | {r['p50'] / alone['p50']:.2f}x "
                  f"| {r['p95'] / alone['p95']:.2f}x |")
    weighted = results.get("fair: weights 2:1")
    if weighted:
        print(f"\nweights 2:1, both backlogged: A {weighted['tokens_a']} tokens ({weighted['jobs_a']} jobs), "
              f"B {weighted['tokens_b']} tokens ({weighted['jobs_b']} jobs): {weighted['ratio']:.2f} : 1")
    fair_alone, fifo_alone = results.get("fair: A alone"), results.get("FIFO: A alone")
    if fair_alone and fifo_alone:
        print(f"A alone: fair share {fair_alone['jobs_per_s']:.2f} jobs/s, {fair_alone['tokens_per_s']:.1f} tokens/s; "
              f"FIFO {fifo_alone['jobs_per_s']:.2f} jobs/s, {fifo_alone['tokens_per_s']:.1f} tokens/s: "
              f"{fair_alone['jobs_per_s'] / fifo_alone['jobs_per_s']:.2f}x and "
              f"{fair_alone['tokens_per_s'] / fifo_alone['tokens_per_s']:.2f}x FIFO's")


if __name__ == "__main__":
    main()
