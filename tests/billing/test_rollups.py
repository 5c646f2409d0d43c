"""The daily roll-ups equal the ledger's sums: as calls are recorded, after a rebuild, and when calls race."""
import threading
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from billing.models import UsageDaily
from billing.rebuild import rebuild_rollups


def rollups() -> dict[tuple, dict]:
    return {(row.pop("day"), row.pop("owner_id"), row.pop("function_id"), row.pop("model_id")): row
            for row in UsageDaily.objects.values("day", "owner_id", "function_id", "model_id", "calls",
                                                 "failed_calls", "unmetered_calls", "uncosted_calls",
                                                 "prompt_tokens", "completion_tokens", "cost", "jobs")}


def assert_rollups_equal_ledger(ledger_sums, same_money) -> None:
    expected = ledger_sums(lambda *key: key)
    actual = rollups()
    assert set(actual) == set(expected)
    for key, sums in expected.items():
        row = actual[key]
        assert (row["calls"], row["failed_calls"], row["unmetered_calls"], row["uncosted_calls"],
                row["prompt_tokens"], row["completion_tokens"], row["jobs"]) == (
            sums.calls, sums.failed_calls, sums.unmetered_calls, sums.uncosted_calls, sums.prompt_tokens,
            sums.completion_tokens, sums.jobs), key
        assert same_money(row["cost"], sums.cost), key


def test_rollups_equal_the_ledger_over_months_and_models(alice, bob, charlie, seed_usage, ledger_sums, same_money):
    seed_usage([alice, bob, charlie], calls=500, days=120)

    assert_rollups_equal_ledger(ledger_sums, same_money)
    # The seed is varied enough to mean something: several months, every model, failures, unknowns, a price change.
    months = {day.month for day, *_ in rollups()}
    assert len(months) >= 4
    assert {model for *_, model in rollups()} == {"llama3.1:8b", "qwen2.5:14b", "mistral:7b", "experimental:1b"}
    totals = ledger_sums()["all"]
    assert totals.failed_calls and totals.unmetered_calls and totals.uncosted_calls > totals.unmetered_calls


def test_a_job_without_calls_is_still_counted(alice, make_function, new_job, day0):
    new_job(make_function(alice), at=day0)

    row = UsageDaily.objects.get()
    assert (row.day, row.jobs, row.calls) == (day0.date(), 1, 0)


def test_rebuilding_gives_the_same_rollups(alice, bob, seed_usage, ledger_sums, same_money):
    seed_usage([alice, bob], calls=300, days=60)
    before = rollups()

    rebuilt = rebuild_rollups()

    assert rebuilt == len(before)
    after = rollups()
    assert set(after) == set(before)
    for key, row in before.items():
        assert {**after[key], "cost": None} == {**row, "cost": None}
        assert same_money(after[key]["cost"], row["cost"])


def test_the_rebuild_command_repairs_damaged_rollups(alice, bob, seed_usage, ledger_sums, same_money):
    seed_usage([alice, bob], calls=300, days=60)
    first_day = min(day for day, *_ in rollups())
    UsageDaily.objects.filter(day=first_day).delete()
    UsageDaily.objects.filter(day__gt=first_day + timedelta(days=20)).update(calls=0, cost=0, jobs=99)

    call_command("rebuild_usage_rollups")

    assert_rollups_equal_ledger(ledger_sums, same_money)


def test_rebuilding_a_range_leaves_other_days_alone(alice, seed_usage, ledger_sums, same_money, day0):
    seed_usage([alice], calls=200, days=30)
    start, end = day0.date() + timedelta(days=5), day0.date() + timedelta(days=9)
    UsageDaily.objects.update(calls=0)

    call_command("rebuild_usage_rollups", "--from", start.isoformat(), "--to", end.isoformat())

    expected = ledger_sums(lambda *key: key)
    for key, row in rollups().items():
        assert row["calls"] == (expected[key].calls if start <= key[0] <= end else 0), key


@pytest.mark.parametrize("arguments", [["--from", "2026-02-30"], ["--to", "soon"],
                                       ["--from", "2026-03-02", "--to", "2026-03-01"]])
def test_the_rebuild_command_refuses_bad_days(db, arguments):
    with pytest.raises(CommandError):
        call_command("rebuild_usage_rollups", *arguments)


def test_calls_racing_on_a_new_day_make_one_row_with_every_call(alice, usual_prices, make_function, new_job,
                                                                 transactional_db, day0, same_money):
    """Many gateway threads record the first calls of a day at once: one roll-up row, nothing lost."""
    from jobs.metering.ledger import record_call
    from jobs.models import LLMCall
    from nodeclient import Usage

    function = make_function(alice)
    jobs = [new_job(function, at=day0 - timedelta(days=1)) for _ in range(4)]
    threads_count, calls_each = 6, 10
    barrier = threading.Barrier(threads_count)
    errors: list[BaseException] = []

    def gateway_thread(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            for n in range(calls_each):
                record_call(job_id=jobs[(index + n) % len(jobs)].pk, model_id="llama3.1:8b", node="test-node",
                            endpoint="/api/chat", streamed=False, usage=Usage(100 + n, 10 + index), max_tokens=64,
                            done_reason="stop", duration_ms=5, node_duration_ms=None)
        except BaseException as exc:  # reported below, with the thread's own traceback
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=gateway_thread, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not errors, errors
    today = timezone.localdate()
    rows = UsageDaily.objects.filter(model_id="llama3.1:8b", calls__gt=0)
    assert [row.day for row in rows] == [today]
    row = rows.get()
    calls = list(LLMCall.objects.all())
    assert row.calls == len(calls) == threads_count * calls_each
    assert row.prompt_tokens == sum(call.prompt_tokens for call in calls)
    assert row.completion_tokens == sum(call.completion_tokens for call in calls)
    assert same_money(row.cost, sum(call.cost for call in calls))
