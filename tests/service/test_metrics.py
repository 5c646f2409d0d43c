"""/metrics: the Prometheus text format, protected, and moving when a real job runs (a real container, the real
model through the job's gateway)."""
from __future__ import annotations

import pytest

from tests.fixtures.ai_node import AINode
from tests.service.ops_helpers import Samples, parse_metrics, total
from tests.support.jobs import deploy

SCRIPT = '''
import ai_client

def handler(event, context):
    return {"text": ai_client.generate("Say hi.", temperature=0, seed=42, max_tokens=8)}
'''


def scrape(client, **headers) -> Samples:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return parse_metrics(response.content.decode())


def test_metrics_answer_loopback_clients_when_no_token_is_set(db, anonymous, settings):
    settings.METRICS_TOKEN = ""
    assert anonymous.get("/metrics").status_code == 200
    assert anonymous.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403


def test_in_production_metrics_need_a_token_even_from_loopback(db, anonymous, settings):
    settings.PRODUCTION, settings.METRICS_TOKEN = True, ""
    assert anonymous.get("/metrics").status_code == 403
    settings.METRICS_TOKEN = "s3cret-scrape-token"
    assert anonymous.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-scrape-token").status_code == 200


def test_metrics_need_the_token_when_one_is_set(db, anonymous, settings):
    settings.METRICS_TOKEN = "s3cret-scrape-token"
    assert anonymous.get("/metrics").status_code == 403
    assert anonymous.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert anonymous.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-scrape-token",
                         REMOTE_ADDR="10.1.2.3").status_code == 200


@pytest.mark.timeout(180)
def test_metrics_move_when_a_job_runs(transactional_db, settings, anonymous, alice, ai_node: AINode,
                                      job_work_root):
    from jobs.runner import run_job

    settings.AI_NODE_URL, settings.AI_NODE_KIND, settings.AI_NODES = ai_node.openai_url, "openai", ""
    settings.METRICS_TOKEN = ""
    function = deploy(alice, SCRIPT)
    before = scrape(anonymous)

    response = alice.client.post("/run", {"functionId": function["functionId"], "modelId": ai_node.model_id},
                                 format="json", HTTP_X_ASYNC="true")
    assert response.status_code == 202, response.content
    submitted = scrape(anonymous)
    assert total(submitted, "ainode_jobs_submitted_total", model=ai_node.model_id) == \
        total(before, "ainode_jobs_submitted_total", model=ai_node.model_id) + 1

    run_job(response.json()["jobId"])
    after = scrape(anonymous)
    job = alice.client.get(f"/status/{response.json()['jobId']}").json()
    assert job["status"] == "succeeded", job

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("ainode_jobs_finished_total", status="succeeded", error_code="") == 1
    assert moved("ainode_job_queue_wait_seconds_count") == 1
    assert moved("ainode_job_run_seconds_count", status="succeeded") == 1
    assert moved("ainode_container_start_seconds_count") == 1
    assert moved("ainode_model_calls_total", model=ai_node.model_id, node="default", outcome="ok") == 1
    assert moved("ainode_tokens_total", model=ai_node.model_id, kind="prompt") == job["promptTokens"] > 0
    assert moved("ainode_tokens_total", model=ai_node.model_id, kind="completion") == job["completionTokens"] > 0
    assert moved("ainode_gateway_added_latency_seconds_count") == 1
    assert total(after, "ainode_jobs_running") == total(before, "ainode_jobs_running")
    # The catalogue was synced when the job was routed: the node's age is a few seconds at most.
    assert 0 <= total(after, "ainode_catalog_sync_age_seconds", node="default") < 120


def test_a_node_error_counts_as_one(transactional_db, settings, anonymous):
    from core import metrics

    before = scrape(anonymous)
    metrics.model_call(model="m", node="gpu-9", error_code="node_unreachable", prompt_tokens=None,
                       completion_tokens=None, duration_ms=5, node_duration_ms=None)
    after = scrape(anonymous)
    assert total(after, "ainode_node_errors_total", node="gpu-9", code="node_unreachable") - \
        total(before, "ainode_node_errors_total", node="gpu-9", code="node_unreachable") == 1
    assert total(after, "ainode_model_calls_total", node="gpu-9", outcome="node_unreachable") - \
        total(before, "ainode_model_calls_total", node="gpu-9", outcome="node_unreachable") == 1
