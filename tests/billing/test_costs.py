"""A call's cost is fixed when it is recorded, at the price then in force; unknown is never zero; jobs show it."""
from datetime import timedelta
from decimal import Decimal

from django.db.models import F

from billing.models import ModelPrice, UsageDaily
from jobs.models import Job, LLMCall
from jobs.results import execution_result


def test_a_call_is_priced_at_the_price_in_force_when_it_is_recorded(alice, set_price, make_function, new_job,
                                                                     record):
    set_price("llama3.1:8b", "0.500000", "1.500000")
    job = new_job(make_function(alice))

    call = record(job, prompt=1000, completion=2000)

    # 1000 x 0.5 / 1000 + 2000 x 1.5 / 1000
    assert call.cost == Decimal("3.5")
    call.refresh_from_db()
    assert call.cost == Decimal("3.5")


def test_fractions_of_a_cent_are_kept_exactly(alice, set_price, make_function, new_job, record):
    set_price("llama3.1:8b", "0.000150", "0.000600")
    job = new_job(make_function(alice))

    call = record(job, prompt=37, completion=12)

    call.refresh_from_db()
    assert call.cost == Decimal("0.00001275")  # 37 x 0.00015 / 1000 + 12 x 0.0006 / 1000


def test_a_later_price_change_does_not_rewrite_old_costs(alice, set_price, make_function, new_job, record, day0):
    old_price = set_price("llama3.1:8b", "1.000000", "2.000000")
    job = new_job(make_function(alice))
    before = record(job, at=day0, prompt=1000, completion=1000)

    set_price("llama3.1:8b", "10.000000", "20.000000", since=day0 + timedelta(days=1))
    after = record(job, at=day0 + timedelta(days=2), prompt=1000, completion=1000)
    # Editing the old row in place changes nothing already billed either.
    ModelPrice.objects.filter(pk=old_price.pk).update(price_per_1k_prompt=F("price_per_1k_prompt") * 100)

    before.refresh_from_db()
    after.refresh_from_db()
    job.refresh_from_db()
    assert before.cost == Decimal("3")
    assert after.cost == Decimal("30")
    assert job.cost == Decimal("33")
    assert sorted(UsageDaily.objects.values_list("cost", flat=True)) == [Decimal("3"), Decimal("30")]


def test_a_price_that_starts_later_is_not_used_yet(alice, set_price, make_function, new_job, record, day0):
    set_price("llama3.1:8b", "1.000000", "1.000000")
    set_price("llama3.1:8b", "9.000000", "9.000000", since=day0 + timedelta(hours=1))
    job = new_job(make_function(alice))

    call = record(job, at=day0, prompt=1000, completion=0)

    assert call.cost == Decimal("1")


def test_unknown_token_counts_leave_the_cost_unknown_not_zero(alice, set_price, make_function, new_job, record):
    set_price("llama3.1:8b", "1.000000", "1.000000")
    job = new_job(make_function(alice))
    record(job, prompt=1000, completion=1000)

    unknown = record(job, prompt=None, completion=None)

    unknown.refresh_from_db()
    job.refresh_from_db()
    assert unknown.cost is None
    assert job.cost == Decimal("2")
    assert (job.llm_calls, job.unmetered_calls, job.uncosted_calls) == (2, 1, 1)
    day = UsageDaily.objects.get()
    assert (day.calls, day.unmetered_calls, day.uncosted_calls, day.cost) == (2, 1, 1, Decimal("2"))


def test_a_model_without_a_price_has_an_unknown_cost(alice, set_price, make_function, new_job, record):
    set_price("llama3.1:8b", "1.000000", "1.000000")
    job = new_job(make_function(alice), model_id="experimental:1b")

    call = record(job, prompt=500, completion=500)

    call.refresh_from_db()
    job.refresh_from_db()
    assert call.cost is None
    assert (job.prompt_tokens, job.completion_tokens, job.unmetered_calls, job.uncosted_calls) == (500, 500, 0, 1)
    assert job.cost == 0


def test_a_free_model_costs_zero_which_is_known(alice, set_price, make_function, new_job, record):
    set_price("smollm2:135m", "0", "0")
    job = new_job(make_function(alice), model_id="smollm2:135m")

    call = record(job, prompt=500, completion=500)

    call.refresh_from_db()
    job.refresh_from_db()
    assert call.cost == 0
    assert job.uncosted_calls == 0


def test_a_job_costs_the_sum_of_its_calls(alice, usual_prices, make_function, new_job, record, same_money):
    job = new_job(make_function(alice), model_id="qwen2.5:14b")
    for prompt, completion in ((10, 5), (2000, 700), (1, 0), (333, 333)):
        record(job, prompt=prompt, completion=completion)
    record(job, model_id="llama3.1:8b", prompt=100, completion=100)  # an allowed second model, at its own price

    job.refresh_from_db()
    assert same_money(job.cost, sum(LLMCall.objects.filter(job=job).values_list("cost", flat=True)))
    assert job.cost == Decimal("0.1") * Decimal("2344") / 1000 + Decimal("0.15") * Decimal("1038") / 1000 + (
        Decimal("0.05") * 100 / 1000 + Decimal("0.08") * 100 / 1000)


def test_the_execution_result_shows_the_jobs_cost(alice, set_price, make_function, new_job, record):
    set_price("llama3.1:8b", "0.500000", "1.500000")
    job = new_job(make_function(alice))
    record(job, prompt=1000, completion=2000)
    record(job, prompt=None, completion=None)

    result = execution_result(Job.objects.get(pk=job.pk))

    assert Decimal(result["cost"]) == Decimal("3.5")
    assert result["uncostedCalls"] == 1
    assert result["currency"] == "USD"


def test_users_see_their_jobs_cost_over_the_api(alice, set_price, make_function, new_job, record):
    set_price("llama3.1:8b", "0.500000", "1.500000")
    job = new_job(make_function(alice))
    record(job, prompt=1000, completion=2000)

    body = alice.client.get(f"/status/{job.pk}").json()

    assert Decimal(body["cost"]) == Decimal("3.5")
    assert body["uncostedCalls"] == 0
