"""Benchmark: the usage dashboard over a range of a million model calls, against aggregating the raw ledger.

    .venv/bin/python bench/dashboard.py                 # SQLite (a temporary file), 1,000,000 calls
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/infra_ainode .venv/bin/python bench/dashboard.py
                                                        # SQLite, then PostgreSQL (a temporary database)
    .venv/bin/python bench/dashboard.py --calls 200000 --repeat 3

For each database it seeds a year of usage with bulk_create (users with skewed spend, functions, six models, prices
that change half way, about eight calls per job, some failed and some unmetered calls), builds the daily roll-ups
from that ledger with `rebuild_usage_rollups`' service, checks that the dashboard's totals equal the ledger's, and
then prints:

- the dashboard's render time over the whole range (the Django test client, a logged-in operator; median of
  --repeat runs), which reads the roll-ups;
- the baseline, measured in the same run on the same data: the same totals and groupings (by day, model, user,
  function) aggregated directly from the LLMCall ledger (median of --baseline-repeat runs).

Each database runs in a child process of its own (settings are read once per process). Nothing here is part of the
test run's pass or fail.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

MODELS = {  # model id: (price per 1k prompt, per 1k completion, share of jobs)
    "llama3.1:8b": ("0.050000", "0.080000", 30),
    "llama3.1:70b": ("0.350000", "0.400000", 12),
    "qwen2.5:14b": ("0.100000", "0.150000", 20),
    "mistral:7b": ("0.040000", "0.060000", 18),
    "smollm2:135m": ("0.002000", "0.004000", 15),
    "experimental:1b": (None, None, 5),  # no price: its calls' cost is unknown
}
USERS = 40
FUNCTIONS_PER_USER = 3
DAYS = 365
CALLS_PER_JOB = (1, 15)
BATCH_JOBS = 4000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1_000_000, help="ledger rows to seed (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=5, help="dashboard renders to time (default 5)")
    parser.add_argument("--baseline-repeat", type=int, default=3, help="ledger aggregations to time (default 3)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run(args)
        return
    targets = [("SQLite", None)]
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://")):
        targets.append(("PostgreSQL", url))
    for name, server_url in targets:
        print(f"== {name} ==", flush=True)
        if server_url is None:
            with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as folder:
                child(args, f"sqlite:///{folder}/bench.sqlite3", Path(folder))
        else:
            with postgres_database(server_url) as bench_url, tempfile.TemporaryDirectory() as folder:
                child(args, bench_url, Path(folder))


def child(args: argparse.Namespace, database_url: str, var_dir: Path) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "infra_ainode.settings",
           "VAR_DIR": str(var_dir), "LOG_LEVEL": "WARNING"}
    command = [sys.executable, __file__, "--child", "--calls", str(args.calls), "--repeat", str(args.repeat),
               "--baseline-repeat", str(args.baseline_repeat)]
    subprocess.run(command, env=env, check=True, cwd=REPO_ROOT)


class postgres_database:
    """A fresh database on the server of `url`, dropped afterwards."""

    def __init__(self, url: str):
        import dj_database_url

        self.conf = dj_database_url.parse(url)
        self.name = f"infra_ainode_bench_{os.getpid()}"
        base, _, _ = url.rpartition("/")
        self.url = f"{base}/{self.name}"

    def _admin(self):
        import psycopg

        return psycopg.connect(host=self.conf["HOST"] or "127.0.0.1", port=self.conf["PORT"] or 5432,
                               user=self.conf["USER"], password=self.conf["PASSWORD"] or None, dbname="postgres",
                               autocommit=True)

    def __enter__(self) -> str:
        with self._admin() as connection:
            connection.execute(f'CREATE DATABASE "{self.name}"')
        return self.url

    def __exit__(self, *exc_info) -> None:
        with self._admin() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


# --- the child: seed, build roll-ups, time --------------------------------------------------------------------

def run(args: argparse.Namespace) -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    began = time.monotonic()
    calls, jobs = seed(args.calls)
    seeded = time.monotonic() - began
    print(f"seeded {calls:,} calls in {jobs:,} jobs with bulk_create in {seeded:.1f} s "
          f"({connection.vendor})", flush=True)

    from billing.models import UsageDaily
    from billing.rebuild import rebuild_rollups

    began = time.monotonic()
    rows = rebuild_rollups()
    print(f"rebuild_usage_rollups: {rows:,} roll-up rows from {calls:,} calls in {time.monotonic() - began:.1f} s "
          f"({calls / max(UsageDaily.objects.count(), 1):.0f} calls per row)", flush=True)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # planner statistics, as a maintained database has them

    span, client = dashboard_client()
    check_totals(span, client)
    print(f"load average before timing: {' '.join(f'{load:.2f}' for load in os.getloadavg())} "
          f"({os.cpu_count()} CPUs)", flush=True)
    dashboard = [timed(lambda: render(client, span)) for _ in range(args.repeat)]
    baseline = [timed(lambda: aggregate_ledger(span)) for _ in range(args.baseline_repeat)]
    print(f"dashboard over {span.days} days ({span.start} to {span.end}), {calls:,} calls, from the roll-ups: "
          f"median {statistics.median(dashboard) * 1000:.0f} ms "
          f"(min {min(dashboard) * 1000:.0f}, max {max(dashboard) * 1000:.0f}; {args.repeat} renders)")
    print(f"baseline, the same figures aggregated from the raw ledger: "
          f"median {statistics.median(baseline) * 1000:.0f} ms "
          f"(min {min(baseline) * 1000:.0f}, max {max(baseline) * 1000:.0f}; {args.baseline_repeat} runs)")
    print(f"speed-up: {statistics.median(baseline) / statistics.median(dashboard):.0f}x", flush=True)


def seed(total_calls: int) -> tuple[int, int]:
    """A year of usage: returns (calls, jobs) written."""
    from django.contrib.auth.models import User
    from django.utils import timezone

    from billing.models import ModelPrice
    from jobs import services
    from jobs.models import Job, JobStatus, LLMCall, LLMCallStatus

    rng = random.Random(20261126)
    now = timezone.now()
    first = now - timedelta(days=DAYS)
    prices: dict[str, list[ModelPrice]] = {}
    for model_id, (prompt, completion, _) in MODELS.items():
        if prompt is None:
            continue
        opening = ModelPrice.objects.create(model_id=model_id, price_per_1k_prompt=Decimal(prompt),
                                            price_per_1k_completion=Decimal(completion),
                                            effective_from=first - timedelta(days=1))
        # Half way through the year every price drops by a fifth: old calls keep their old cost.
        cut = ModelPrice.objects.create(model_id=model_id, price_per_1k_prompt=Decimal(prompt) * Decimal("0.8"),
                                        price_per_1k_completion=Decimal(completion) * Decimal("0.8"),
                                        effective_from=first + timedelta(days=DAYS // 2))
        prices[model_id] = [cut, opening]

    def price_at(model_id: str, at) -> ModelPrice | None:
        return next((p for p in prices.get(model_id, []) if p.effective_from <= at), None)

    users = [User.objects.create_user(username=f"user{n:03d}", email=f"user{n:03d}@example.org") for n in range(USERS)]
    functions = [services.deploy_function(owner=user, name=f"fn-{user.username}-{k}",
                                          code=b"def handler(event, context):\n    return event\n")
                 for user in users for k in range(FUNCTIONS_PER_USER)]
    versions = {function.pk: function.current_version for function in functions}
    # A few heavy users and many light ones, as in life.
    weights = [1 / (rank + 1) ** 0.9 for rank in range(len(functions))]
    model_ids, model_weights = list(MODELS), [share for *_, share in MODELS.values()]

    calls_written = jobs_written = 0
    while calls_written < total_calls:
        jobs, calls = [], []
        for _ in range(BATCH_JOBS):
            if calls_written + len(calls) >= total_calls:
                break
            function = rng.choices(functions, weights)[0]
            model_id = rng.choices(model_ids, model_weights)[0]
            created = first + timedelta(seconds=rng.uniform(0, DAYS * 86400 - 3600))
            job = Job(id=uuid.uuid4(), owner_id=function.owner_id, function=function,
                      function_version=versions[function.pk], model_id=model_id, queue="jobs", memory_mb=256,
                      timeout_seconds=60, status=JobStatus.SUCCEEDED, created_at=created,
                      started_at=created + timedelta(milliseconds=300), worker_id="bench-worker")
            at = job.started_at
            for _ in range(min(rng.randint(*CALLS_PER_JOB), total_calls - calls_written - len(calls))):
                at += timedelta(milliseconds=rng.randint(200, 4000))
                failed = rng.random() < 0.03 * (3 if model_id == "experimental:1b" else 1)
                metered = not failed and rng.random() > 0.01
                prompt = rng.randint(20, 1500) if metered else None
                completion = rng.randint(1, 600) if metered else None
                price = price_at(model_id, at) if metered else None
                cost = price.cost_of(prompt_tokens=prompt, completion_tokens=completion) if price else None
                calls.append(LLMCall(job_id=job.id, model_id=model_id, node="gpu-1", endpoint="/v1/chat/completions",
                                     status=LLMCallStatus.ERROR if failed else LLMCallStatus.OK,
                                     prompt_tokens=prompt, completion_tokens=completion, cost=cost,
                                     duration_ms=rng.randint(100, 4000), error_code="node_error" if failed else "",
                                     done_reason="" if failed else "stop", created_at=at))
                job.llm_calls += 1
                if metered:
                    job.prompt_tokens += prompt
                    job.completion_tokens += completion
                else:
                    job.unmetered_calls += 1
                if cost is None:
                    job.uncosted_calls += 1
                else:
                    job.cost += cost
            job.finished_at = at + timedelta(milliseconds=200)
            job.duration_ms = round((job.finished_at - job.started_at).total_seconds() * 1000)
            jobs.append(job)
        Job.objects.bulk_create(jobs, batch_size=2000)
        LLMCall.objects.bulk_create(calls, batch_size=5000)
        calls_written += len(calls)
        jobs_written += len(jobs)
    return calls_written, jobs_written


def dashboard_client():
    from django.contrib.auth.models import User
    from django.test import Client
    from django.utils import timezone

    from core.ranges import DateRange

    operator = User.objects.create_superuser("operator", "operator@example.org", "bench")
    client = Client()
    client.force_login(operator)
    today = timezone.localdate()
    return DateRange(today - timedelta(days=DAYS), today), client


def render(client, span) -> bytes:
    response = client.get("/admin/usage/", {"from": span.start.isoformat(), "to": span.end.isoformat()})
    assert response.status_code == 200, response.status_code
    return response.content


def timed(work) -> float:
    began = time.perf_counter()
    work()
    return time.perf_counter() - began


def check_totals(span, client) -> None:
    """The dashboard shows the ledger's own totals (a wrong fast page would be no result)."""
    import re

    from core.formatting import count, money
    from jobs.export import jobs_in_range
    from jobs.metering.ledger import LEDGER_SUMS
    from jobs.models import LLMCall

    page = render(client, span).decode()
    ledger = LLMCall.objects.filter(created_at__gte=day_start(span.start),
                                    created_at__lt=day_start(span.end + timedelta(days=1))).aggregate(**LEDGER_SUMS)
    expected = {"total-calls": count(ledger["sum_calls"]), "total-failed-calls": count(ledger["sum_failed_calls"]),
                "total-tokens": count(ledger["sum_prompt_tokens"] + ledger["sum_completion_tokens"]),
                "total-cost": money(ledger["sum_cost"]), "total-jobs": count(jobs_in_range(span).count())}
    for element, value in expected.items():
        shown = re.search(rf'id="{element}">([^<]*)<', page).group(1)
        assert shown == value, f"{element}: the dashboard shows {shown}, the ledger says {value}"
    print(f"check: the dashboard's totals equal the ledger's ({expected['total-calls']} calls, "
          f"{expected['total-tokens']} tokens, cost {expected['total-cost']})", flush=True)


def day_start(day):
    from core.ranges import day_start as start_of

    return start_of(day)


def aggregate_ledger(span) -> None:
    """The baseline: what the dashboard shows, computed from the LLMCall ledger itself."""
    from django.db.models import Count
    from django.db.models.functions import TruncDate

    from jobs.export import jobs_in_range
    from jobs.metering.ledger import LEDGER_SUMS
    from jobs.models import LLMCall

    calls = LLMCall.objects.filter(created_at__gte=day_start(span.start),
                                   created_at__lt=day_start(span.end + timedelta(days=1)))
    for grouping in (calls.annotate(day=TruncDate("created_at")).values("day"), calls.values("model_id"),
                     calls.values("job__owner_id", "job__owner__username"),
                     calls.values("job__function_id", "job__function__name", "job__owner__username")):
        list(grouping.annotate(**LEDGER_SUMS).order_by())
    calls.aggregate(**LEDGER_SUMS)
    # The job counts are read from Job rows on both sides, as the dashboard does.
    jobs = jobs_in_range(span)
    for grouping in (jobs.annotate(day=TruncDate("created_at")).values("day"), jobs.values("model_id"),
                     jobs.values("owner_id", "owner__username"),
                     jobs.values("function_id", "function__name", "owner__username")):
        list(grouping.annotate(n=Count("id")).order_by())


if __name__ == "__main__":
    main()
