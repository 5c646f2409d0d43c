"""What Schemathesis found, each kept as a sentence: requests the schema forbids are refused with 400 in the one
error shape (never accepted quietly, never a 500), and Django's own 404s carry a code."""
import json

import pytest

from tests.support.jobs import deploy

pytestmark = pytest.mark.usefixtures("served_models")


@pytest.fixture
def function(alice):
    return deploy(alice, "def handler(event, context):\n    return event\n", name="echo")


def post_run(account, body, **headers):
    return account.client.post("/run", json.dumps(body), content_type="application/json", HTTP_X_ASYNC="true",
                               **headers)


@pytest.mark.parametrize("text", ['{"a": "\\u0000"}', '{"\\u0000": 1}', '["\\ud800"]'])
def test_input_a_database_cannot_store_answers_400(alice, function, text):
    body = f'{{"functionId": "{function["functionId"]}", "inputData": {text}}}'
    response = alice.client.post("/run", body, content_type="application/json", HTTP_X_ASYNC="true")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_input"


def test_a_token_budget_past_a_trillion_answers_400(alice, function):
    response = post_run(alice, {"functionId": function["functionId"], "tokenBudget": 10**30})
    assert response.status_code == 400
    assert "tokenBudget" in response.json()["errors"]


def test_x_async_other_than_true_or_false_answers_400(alice, function):
    response = alice.client.post("/run", {"functionId": function["functionId"]}, format="json", HTTP_X_ASYNC="yes")
    assert (response.status_code, response.json()["code"]) == (400, "invalid_x_async")


def test_x_async_is_read_in_any_case(alice, function):
    response = alice.client.post("/run", {"functionId": function["functionId"]}, format="json", HTTP_X_ASYNC="TRUE")
    assert response.status_code == 202


@pytest.mark.parametrize("query", ["page_size=0", "page_size=501", "page_size=x", "page=0", "page=", "page=-1"])
def test_paging_parameters_out_of_range_answer_400(alice, query):
    response = alice.client.get(f"/api/v1/jobs/?{query}")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"


def test_a_page_past_the_end_answers_404_with_a_code(alice):
    response = alice.client.get("/api/v1/jobs/?page=2")
    assert (response.status_code, response.json()["code"]) == (404, "not_found")


def test_a_format_suffix_that_is_not_one_answers_404_with_a_code(alice):
    response = alice.client.get("/api/v1/jobs/0.5/")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


@pytest.mark.parametrize("path", ["/api/v1/usage/?to=", "/api/v1/usage/?from=", "/api/v1/usage/jobs.csv?to="])
def test_a_blank_date_answers_400_in_the_api(alice, path):
    response = alice.client.get(path)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_date"


def test_a_blank_grouping_answers_400(alice):
    assert alice.client.get("/api/v1/usage/?group_by=").json()["code"] == "invalid_group_by"


def test_a_model_filter_that_cannot_be_a_model_id_answers_400(alice):
    response = alice.client.get("/api/v1/jobs/?model=%00")
    assert (response.status_code, response.json()["code"]) == (400, "invalid_model_id")


def test_a_put_without_a_body_changes_nothing(alice, function):
    response = alice.client.put(f"/api/v1/functions/{function['functionId']}/")
    assert response.status_code == 200
    assert response.json()["version"] == 1
