"""POST /run (and POST /api/v1/jobs/), GET /status/{id} and /api/v1/jobs/{id}/, the job list with its filters,
and cancel. Here no worker runs: jobs stay queued (the end-to-end tests run them)."""
import uuid

import pytest

from jobs.models import Job
from tests.support.brokers import broker_messages
from tests.support.jobs import deploy, make_job

pytestmark = pytest.mark.usefixtures("served_models")


HANDLER = "def handler(event, context):\n    return event\n"


@pytest.fixture
def function(alice):
    return deploy(alice, HANDLER, name="echo")


# --- submitting -------------------------------------------------------------------------------------------------

def test_run_with_x_async_answers_202_with_the_job_id_and_enqueues_it(alice, function, _isolated_broker, settings,
                                                                     django_capture_on_commit_callbacks):
    settings.JOB_DISPATCH = "direct"  # the web process publishes (the outbox's relays: test_job_outbox.py)
    with django_capture_on_commit_callbacks(execute=True):
        response = alice.client.post("/run", {"functionId": function["functionId"], "modelId": "smollm2:135m",
                                              "inputData": {"x": 1}}, format="json", HTTP_X_ASYNC="true")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "ACCEPTED"
    job = Job.objects.get(pk=body["jobId"])
    assert (job.owner, job.status, job.model_id, job.input_data) == (alice.user, "queued", "smollm2:135m", {"x": 1})
    assert body["statusUrl"] == f"/status/{job.pk}"
    (message,) = broker_messages(_isolated_broker)
    assert message["headers"]["task"] == "jobs.run_job"
    assert str(job.pk) in message["headers"]["argsrepr"]


def test_the_job_is_enqueued_only_after_its_row_is_committed(alice, function, _isolated_broker, settings,
                                                             django_capture_on_commit_callbacks):
    settings.JOB_DISPATCH = "direct"
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = alice.client.post("/run", {"functionId": function["functionId"]}, format="json",
                                     HTTP_X_ASYNC="true")
    assert response.status_code == 202
    assert len(callbacks) == 1
    assert broker_messages(_isolated_broker) == []


def test_post_api_v1_jobs_submits_as_well(alice, function):
    response = alice.client.post("/api/v1/jobs/", {"functionId": function["functionId"]}, format="json",
                                 HTTP_X_ASYNC="true")
    assert response.status_code == 202, response.content
    assert Job.objects.filter(pk=response.json()["jobId"]).exists()


def test_a_synchronous_run_whose_wait_ends_first_answers_202_with_the_job_id(alice, function, settings):
    settings.RUN_SYNC_TIMEOUT = 0.3
    response = alice.client.post("/run", {"functionId": function["functionId"], "inputData": 1}, format="json")
    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["status"], body["jobStatus"]) == ("ACCEPTED", "queued")
    assert Job.objects.filter(pk=body["jobId"], status="queued").exists()  # not lost


def test_the_model_defaults_to_the_functions_default_model(alice, settings):
    function = deploy(alice, HANDLER, default_model="smollm2:135m")
    job_id = alice.client.post("/run", {"functionId": function["functionId"]}, format="json",
                               HTTP_X_ASYNC="true").json()["jobId"]
    assert Job.objects.get(pk=job_id).model_id == "smollm2:135m"


def test_a_job_copies_the_functions_limits(alice):
    function = deploy(alice, HANDLER, memory_mb=77, timeout_seconds=9)
    job_id = alice.client.post("/run", {"functionId": function["functionId"]}, format="json",
                               HTTP_X_ASYNC="true").json()["jobId"]
    job = Job.objects.get(pk=job_id)
    assert (job.memory_mb, job.timeout_seconds) == (77, 9)


@pytest.mark.parametrize("function_id", ["5d0c0c2e-3f4f-4a5e-9d0b-7c1e2a3b4c5d", "not-a-uuid", ""])
def test_running_an_unknown_function_is_404_or_invalid(alice, function_id):
    response = alice.client.post("/run", {"functionId": function_id}, format="json", HTTP_X_ASYNC="true")
    if function_id:
        assert response.status_code == 404
        assert response.json()["code"] == "function_not_found"
    else:
        assert response.status_code == 400
    assert Job.objects.count() == 0


def test_malformed_json_is_400(alice, function):
    response = alice.client.post("/run", data='{"functionId": "' + function["functionId"] + '", ',
                                 content_type="application/json", HTTP_X_ASYNC="true")
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"
    assert Job.objects.count() == 0


def test_a_missing_body_is_400(alice):
    response = alice.client.post("/run", data="", content_type="application/json", HTTP_X_ASYNC="true")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert "functionId" in body["errors"]


def test_input_data_larger_than_the_limit_is_413(alice, function, settings):
    settings.JOB_INPUT_MAX_BYTES = 1024
    response = alice.client.post("/run", {"functionId": function["functionId"], "inputData": "x" * 2000},
                                 format="json", HTTP_X_ASYNC="true")
    assert response.status_code == 413
    assert response.json()["code"] == "input_too_large"
    assert Job.objects.count() == 0


def test_input_data_just_under_the_limit_is_accepted(alice, function, settings):
    settings.JOB_INPUT_MAX_BYTES = 1024
    response = alice.client.post("/run", {"functionId": function["functionId"], "inputData": "x" * 1000},
                                 format="json", HTTP_X_ASYNC="true")
    assert response.status_code == 202


def test_a_malformed_model_id_is_400(alice, function):
    response = alice.client.post("/run", {"functionId": function["functionId"], "modelId": "bad model id!"},
                                 format="json", HTTP_X_ASYNC="true")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_model_id"


# --- status -----------------------------------------------------------------------------------------------------

def test_status_answers_the_execution_result_contract(alice):
    job = make_job(alice, HANDLER, {"a": 1})
    for url in (f"/status/{job.pk}", f"/api/v1/jobs/{job.pk}/", f"/api/v1/jobs/{job.pk}"):
        response = alice.client.get(url)
        assert response.status_code == 200, url
        body = response.json()
        for name in ("requestId", "functionId", "workerId", "status", "exitCode", "stdout", "stderr", "durationMs",
                     "peakMemoryBytes", "llm_token_count", "promptTokens", "completionTokens", "llmCalls",
                     "modelId"):
            assert name in body, name
        assert (body["requestId"], body["status"], body["functionId"]) == (str(job.pk), "queued",
                                                                           str(job.function_id))


@pytest.mark.parametrize("job_id", ["5d0c0c2e-3f4f-4a5e-9d0b-7c1e2a3b4c5d", "not-a-uuid", "123", "%27%3B--"])
def test_status_of_an_unknown_or_malformed_id_is_404(alice, job_id):
    for url in (f"/status/{job_id}", f"/api/v1/jobs/{job_id}/"):
        response = alice.client.get(url)
        assert response.status_code == 404, url
        assert response.json()["code"] in ("job_not_found", "not_found")


def test_charlie_cannot_see_alices_job(alice, charlie):
    job = make_job(alice, HANDLER)
    for url in (f"/status/{job.pk}", f"/api/v1/jobs/{job.pk}/"):
        response = charlie.client.get(url)
        assert response.status_code == 404, url
        assert response.json()["code"] == "job_not_found"


# --- list -------------------------------------------------------------------------------------------------------

@pytest.fixture
def some_jobs(alice, charlie):
    """Four jobs of alice's (two queued, one failed, one succeeded; models a and b) and one of charlie's."""
    jobs = {
        "queued-a": make_job(alice, HANDLER, model_id="model-a"),
        "queued-a2": make_job(alice, HANDLER, model_id="model-a"),
        "failed-b": make_job(alice, HANDLER, model_id="model-b"),
        "succeeded-a": make_job(alice, HANDLER, model_id="model-a"),
        "charlies": make_job(charlie, HANDLER, model_id="model-a"),
    }
    Job.objects.filter(pk=jobs["failed-b"].pk).update(status="failed")
    Job.objects.filter(pk=jobs["succeeded-a"].pk).update(status="succeeded")
    return jobs


def listed(account, query: str = "") -> list[str]:
    response = account.client.get(f"/api/v1/jobs/{query}")
    assert response.status_code == 200, response.content
    return [job["jobId"] for job in response.json()["results"]]


def test_the_list_holds_only_the_callers_jobs_newest_first(alice, some_jobs):
    ids = listed(alice)
    assert str(some_jobs["charlies"].pk) not in ids
    assert len(ids) == 4
    created = [Job.objects.get(pk=pk).created_at for pk in ids]
    assert created == sorted(created, reverse=True)


def test_charlie_sees_only_his_own_job_in_the_list(charlie, some_jobs):
    assert listed(charlie) == [str(some_jobs["charlies"].pk)]


def test_the_list_filters_by_status(alice, some_jobs):
    assert listed(alice, "?status=failed") == [str(some_jobs["failed-b"].pk)]
    assert set(listed(alice, "?status=queued")) == {str(some_jobs["queued-a"].pk), str(some_jobs["queued-a2"].pk)}


def test_the_list_refuses_an_unknown_status(alice, some_jobs):
    response = alice.client.get("/api/v1/jobs/?status=exploded")
    assert response.status_code == 400
    assert "status" in response.json()["errors"]


def test_the_list_filters_by_model(alice, some_jobs):
    assert listed(alice, "?model=model-b") == [str(some_jobs["failed-b"].pk)]


def test_the_list_filters_by_function(alice, some_jobs):
    function_id = some_jobs["succeeded-a"].function_id
    assert listed(alice, f"?function={function_id}") == [str(some_jobs["succeeded-a"].pk)]


def test_filtering_by_another_users_function_is_404(alice, charlie, some_jobs):
    response = charlie.client.get(f"/api/v1/jobs/?function={some_jobs['queued-a'].function_id}")
    assert response.status_code == 404


def test_the_filters_combine(alice, some_jobs):
    assert listed(alice, "?model=model-a&status=succeeded") == [str(some_jobs["succeeded-a"].pk)]
    assert listed(alice, "?model=model-b&status=succeeded") == []


def test_the_list_is_paginated(alice, some_jobs):
    first = alice.client.get("/api/v1/jobs/?page_size=3").json()
    assert (first["count"], len(first["results"])) == (4, 3)
    second = alice.client.get(first["next"]).json()
    assert len(second["results"]) == 1
    assert second["next"] is None
    assert {job["jobId"] for job in first["results"] + second["results"]} == set(listed(alice))


# --- cancel -----------------------------------------------------------------------------------------------------

def test_cancelling_a_queued_job_answers_200_and_cancels_it(alice):
    job = make_job(alice, HANDLER)
    response = alice.client.post(f"/api/v1/jobs/{job.pk}/cancel/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["errorCode"]) == ("cancelled", "cancelled")
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert job.finished_at is not None


@pytest.mark.parametrize("status", ["succeeded", "failed", "timed_out", "cancelled"])
def test_cancelling_a_finished_job_is_409_job_finished(alice, status):
    job = make_job(alice, HANDLER)
    Job.objects.filter(pk=job.pk).update(status=status)
    response = alice.client.post(f"/api/v1/jobs/{job.pk}/cancel")
    assert response.status_code == 409
    assert response.json()["code"] == "job_finished"
    job.refresh_from_db()
    assert job.status == status


def test_cancelling_an_unknown_job_is_404(alice):
    assert alice.client.post(f"/api/v1/jobs/{uuid.uuid4()}/cancel").status_code == 404


def test_charlie_cannot_cancel_alices_job(alice, charlie):
    job = make_job(alice, HANDLER)
    response = charlie.client.post(f"/api/v1/jobs/{job.pk}/cancel")
    assert response.status_code == 404
    job.refresh_from_db()
    assert job.status == "queued"


def test_a_job_cannot_be_changed_or_deleted_through_the_api(alice):
    job = make_job(alice, HANDLER)
    assert alice.client.delete(f"/api/v1/jobs/{job.pk}/").status_code == 405
    assert alice.client.patch(f"/api/v1/jobs/{job.pk}/", {"status": "succeeded"}, format="json").status_code == 405
    job.refresh_from_db()
    assert job.status == "queued"
