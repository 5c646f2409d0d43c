"""What a job's money costs its admission: `submit_job`'s CPU for a user with a cost quota, with the function's
allowed models routed and priced (the hold covers the dearest model the job may call), against the same user's
admission of a function with no other allowed models, in one run.

    .venv/bin/python bench/admission_money.py [--jobs 2000] [--rounds 3] [--allowed 3]

In process, on a throw-away SQLite database, the `direct` dispatch onto a filesystem broker that nothing reads
(the publish is the same in both cases). Rounds alternate the two cases; it prints each case's median CPU per
admission and the ratio to the baseline. The gateway's side of the same issue (billing abandoned and cut-off calls,
recount records) runs only on calls that end early; a call that ends well takes the same path as before, so it has
no figure of its own (bench/gateway_latency.py measures that path).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.local_django import setup_django  # noqa: E402 - the root goes on the path first



def _catalogue(allowed: int) -> list[str]:
    from billing.models import ModelPrice
    from models_catalog.models import AINode, ModelCatalog

    node = AINode.objects.create(name="bench", kind="openai", url="http://127.0.0.1:9", queue="jobs")
    models = ["smollm2:135m", *(f"dear-{n}:1b" for n in range(allowed))]
    for n, model_id in enumerate(models):
        ModelCatalog.objects.create(node=node, model_id=model_id, name=model_id)
        ModelPrice.objects.create(model_id=model_id, price_per_1k_prompt=Decimal(n + 1),
                                  price_per_1k_completion=Decimal(n + 2))
    return models


def _admissions(owner: Any, function: Any, jobs: int) -> float:
    """CPU seconds per admission of `jobs` admissions of `function`."""
    from jobs import services

    started = time.process_time()
    for _ in range(jobs):
        services.submit_job(owner=owner, function=function, model_id="smollm2:135m", input_data={"n": 1},
                            token_budget=100)
    return (time.process_time() - started) / jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--allowed", type=int, default=3, help="other allowed models of the second function")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-money-") as workdir:
        setup_django(workdir, JOB_DISPATCH="direct")
        from django.contrib.auth.models import User

        from accounts.models import Quota
        from jobs import services
        from jobs.models import Job

        models = _catalogue(args.allowed)
        owner = User.objects.create_user(username="bench")
        Quota.objects.create(user=owner, monthly_cost=Decimal(10**9), monthly_tokens=10**12)
        plain = services.deploy_function(owner=owner, name="plain", code=b"print(1)\n")
        allowed = services.deploy_function(owner=owner, name="allowed", code=b"print(1)\n",
                                           allowed_models=models[1:])
        cases = {"own model only (baseline)": plain, f"{args.allowed} other allowed models": allowed}
        figures: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, function in cases.items():
                figures[name].append(_admissions(owner, function, args.jobs))
                Job.objects.update(status="succeeded")  # not queued: the next round's routing weighs no queue
        baseline = statistics.median(figures["own model only (baseline)"])
        print(f"admission CPU per job, median of {args.rounds} rounds of {args.jobs} (cost quota, priced models)")
        for name, values in figures.items():
            median = statistics.median(values)
            print(f"  {name:<28} {median * 1000:7.3f} ms   {median / baseline:5.2f}x")


if __name__ == "__main__":
    main()
