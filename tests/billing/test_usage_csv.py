"""GET /api/v1/usage/jobs.csv: a user's own jobs of a range, with tokens and cost, as CSV."""
import csv
import io
from datetime import timedelta

import pytest

CSV_URL = "/api/v1/usage/jobs.csv"


def rows_of(response) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


@pytest.fixture
def two_users_jobs(alice, bob, usual_prices, make_function, new_job, record, day0):
    ask = make_function(alice, "ask")
    first = new_job(ask, at=day0)
    record(first, prompt=1000, completion=500)
    record(first, prompt=None, completion=None)
    second = new_job(ask, model_id="experimental:1b", at=day0 + timedelta(days=2))
    record(second, prompt=10, completion=10)
    new_job(ask, at=day0 + timedelta(days=40))  # outside March
    record(new_job(make_function(bob), at=day0), prompt=7, completion=7)
    return first, second


def test_it_lists_the_callers_jobs_with_tokens_and_cost(alice, two_users_jobs):
    first, second = two_users_jobs

    response = alice.client.get(CSV_URL, {"from": "2026-03-01", "to": "2026-03-31"})

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="jobs-2026-03-01-2026-03-31.csv"'
    rows = rows_of(response)
    assert [row["job_id"] for row in rows] == [str(first.pk), str(second.pk)]
    assert rows[0] == {
        "job_id": str(first.pk), "created_at": "2026-03-01T00:00:00+00:00", "owner": "alice",
        "function_id": str(first.function_id), "function_name": "ask", "model_id": "llama3.1:8b",
        "status": "queued", "duration_ms": "", "llm_calls": "2", "unmetered_calls": "1", "estimated_calls": "0",
        "uncosted_calls": "1",
        "prompt_tokens": "1000", "completion_tokens": "500", "total_tokens": "1500", "cost": "0.0900000000",
        "currency": "USD", "receipt_hash": "",
    }
    # An unpriced model: its tokens are known, its cost is not (and the row says so).
    assert (rows[1]["total_tokens"], rows[1]["cost"], rows[1]["uncosted_calls"]) == ("20", "0.0000000000", "1")


def test_charlie_gets_none_of_alices_jobs(charlie, two_users_jobs):
    response = charlie.client.get(CSV_URL, {"from": "2026-03-01", "to": "2026-03-31"})

    assert response.status_code == 200
    assert rows_of(response) == []


def test_it_answers_csv_to_a_client_that_asks_for_csv(alice, two_users_jobs):
    response = alice.client.get(CSV_URL, {"from": "2026-03-01", "to": "2026-03-31"}, HTTP_ACCEPT="text/csv")

    assert response.status_code == 200
    assert len(rows_of(response)) == 2


@pytest.mark.parametrize("query, code", [({"from": "March"}, "invalid_date"),
                                         ({"from": "2026-03-05", "to": "2026-03-01"}, "invalid_range")])
def test_bad_dates_answer_400_in_the_apis_error_shape(alice, query, code):
    response = alice.client.get(CSV_URL, query, HTTP_ACCEPT="text/csv")

    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == code


def test_it_needs_an_api_key(anonymous):
    assert anonymous.get(CSV_URL).status_code == 401


def test_a_function_name_cannot_become_a_spreadsheet_formula(alice, make_function, new_job, day0):
    new_job(make_function(alice, "=HYPERLINK(1)"), at=day0)

    rows = rows_of(alice.client.get(CSV_URL, {"from": "2026-03-01", "to": "2026-03-01"}))

    assert rows[0]["function_name"] == "'=HYPERLINK(1)"
