"""The operator's job pages in the admin: the list, a job's page with its LLM calls, cancel, re-run, export."""
from types import SimpleNamespace

import pytest

from jobs.models import Job, JobStatus

JOBS = "/admin/jobs/job/"


@pytest.fixture
def finished_job(alice, usual_prices, make_function, new_job, record, day0):
    job = new_job(make_function(alice, "ask"), at=day0, input_data={"question": "What is 2+2?"},
                  status=JobStatus.FAILED, stdout="thinking...\n", stderr="Traceback: boom\n",
                  error_code="script_error", error_message="The script raised ValueError.", exit_code=1,
                  result={"partial": True}, duration_ms=1234, peak_memory_bytes=50 * 2**20,
                  worker_id="gpu-worker-7")
    record(job, prompt=1000, completion=500)
    record(job, prompt=None, completion=None, failed=True)
    return Job.objects.get(pk=job.pk)


def test_the_job_list_shows_what_an_operator_needs(admin_client, finished_job):
    html = admin_client.get(JOBS).content.decode()

    for shown in ("ask", "alice", "llama3.1:8b", "1,500", "0.0900 (+1 unknown)", "1.23 s",
                  "gpu-worker-7", "failed"):
        assert shown in html, shown


def test_the_job_list_filters_and_searches(admin_client, finished_job, alice, make_function, new_job):
    new_job(make_function(alice, "other"), model_id="mistral:7b")

    by_model = admin_client.get(JOBS, {"model_id": "mistral:7b"}).content.decode()
    by_status = admin_client.get(JOBS, {"status__exact": "failed"}).content.decode()
    by_search = admin_client.get(JOBS, {"q": "gpu-worker-7"}).content.decode()

    assert "other v1" in by_model and "ask v1" not in by_model
    assert "ask v1" in by_status and "other v1" not in by_status
    assert "ask v1" in by_search and "other v1" not in by_search


def test_a_jobs_page_shows_its_input_output_error_resources_and_llm_calls(admin_client, finished_job):
    html = admin_client.get(f"{JOBS}{finished_job.pk}/change/").content.decode()

    for shown in ("What is 2+2?", "&quot;partial&quot;: true", "thinking...", "Traceback: boom", "script_error",
                  "The script raised ValueError.", "50.0 MiB", "1.23 s", "0.0900 (+1 unknown)",
                  "LLM calls", "node_error", "/v1/chat/completions"):
        assert shown in html, shown
    assert html.count("test-node") == 2  # both calls, in the inline


def test_cancel_cancels_queued_jobs_and_leaves_finished_ones_alone(admin_client, finished_job, alice,
                                                                   make_function, new_job):
    queued = new_job(make_function(alice))

    response = admin_client.post(JOBS, {"action": "cancel_jobs", "_selected_action": [queued.pk, finished_job.pk]},
                                 follow=True)

    assert Job.objects.get(pk=queued.pk).status == JobStatus.CANCELLED
    assert Job.objects.get(pk=finished_job.pk).status == JobStatus.FAILED
    messages = [str(message) for message in response.context["messages"]]
    assert messages == ["Cancelled 1 job(s).", "1 job(s) had already ended and were left alone."]


def test_rerun_submits_a_new_job_with_the_same_function_model_and_input(admin_client, finished_job, monkeypatch):
    from jobs import services

    # The model catalogue is not what this tests: route every model to the default queue, as itself.
    monkeypatch.setattr(services, "route_model",
                        lambda model_id, **_: SimpleNamespace(name="default", queue="jobs", model_id=model_id))

    response = admin_client.post(JOBS, {"action": "rerun_jobs", "_selected_action": [finished_job.pk]}, follow=True)

    new = Job.objects.exclude(pk=finished_job.pk).get()
    assert (new.function_id, new.model_id, new.input_data, new.owner_id, new.status) == (
        finished_job.function_id, finished_job.model_id, finished_job.input_data, finished_job.owner_id,
        JobStatus.QUEUED)
    assert "Queued 1 new job(s)" in str(list(response.context["messages"])[0])


def test_export_selected_jobs_as_csv(admin_client, finished_job):
    response = admin_client.post(JOBS, {"action": "export_csv", "_selected_action": [finished_job.pk]})

    lines = b"".join(response.streaming_content).decode().splitlines()
    assert len(lines) == 2 and lines[1].startswith(str(finished_job.pk))
    assert ",1000,500,1500,0.0900000000,USD" in lines[1]


def test_the_ledger_is_read_only_in_the_admin(admin_client, finished_job):
    call = finished_job.calls.first()

    assert admin_client.get("/admin/jobs/llmcall/").status_code == 200
    assert admin_client.get(f"/admin/jobs/llmcall/{call.pk}/change/").status_code == 200
    assert admin_client.post(f"/admin/jobs/llmcall/{call.pk}/delete/", {"post": "yes"}).status_code == 403


def test_prices_are_edited_in_the_list(admin_client, set_price):
    price = set_price("llama3.1:8b", "0.1", "0.2")

    html = admin_client.get("/admin/billing/modelprice/").content.decode()

    assert 'name="form-0-price_per_1k_prompt" value="0.100000"' in html
    assert price.model_id in html
