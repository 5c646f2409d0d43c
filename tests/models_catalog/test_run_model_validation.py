"""POST /run checks modelId against the live catalogue and records the node (and queue) the job goes to."""
from __future__ import annotations

import pytest

from jobs.models import Job
from models_catalog import services
from models_catalog.models import ModelCatalog
from tests.models_catalog.helpers import MODEL, Node
from tests.support.jobs import deploy

pytestmark = pytest.mark.django_db

CODE = "def handler(event, context):\n    return event\n"


@pytest.fixture
def function(alice, use_nodes, openai_node) -> dict:
    use_nodes(Node(openai_node.name, "openai", openai_node.url, queue="gpu-1"))
    return deploy(alice, CODE)


def run(account, body: dict):
    return account.client.post("/run", body, format="json", HTTP_X_ASYNC="true")


def test_a_served_model_is_accepted_and_the_job_records_its_node_and_queue(alice, function) -> None:
    response = run(alice, {"functionId": function["functionId"], "modelId": MODEL, "inputData": {}})

    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["jobId"])
    assert (job.model_id, job.node, job.queue) == (MODEL, "real-openai", "gpu-1")


def test_an_unknown_model_is_refused_with_the_available_ids(alice, function) -> None:
    response = run(alice, {"functionId": function["functionId"], "modelId": "llama3:8b"})

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "unknown_model"
    assert body["available"] == [MODEL]
    assert "llama3:8b" in body["detail"]
    assert not Job.objects.exists()


def test_a_disabled_model_is_refused(alice, function) -> None:
    services.sync_catalogue()
    services.set_models_enabled(models=ModelCatalog.objects.all(), enabled=False)

    response = run(alice, {"functionId": function["functionId"], "modelId": MODEL})

    assert response.status_code == 400 and response.json()["code"] == "unknown_model"


def test_a_missing_model_id_takes_the_platform_default(alice, function, settings) -> None:
    settings.DEFAULT_MODEL_ID = MODEL

    response = run(alice, {"functionId": function["functionId"]})

    assert response.status_code == 202, response.content
    assert Job.objects.get().model_id == MODEL


def test_a_missing_model_id_takes_the_functions_default_first(alice, use_nodes, openai_node, settings) -> None:
    use_nodes(openai_node)
    settings.DEFAULT_MODEL_ID = "platform-default:1b"
    function = deploy(alice, CODE, default_model=MODEL)

    response = run(alice, {"functionId": function["functionId"], "modelId": None})

    assert response.status_code == 202, response.content
    assert Job.objects.get().model_id == MODEL


def test_a_platform_default_no_node_serves_is_refused_not_invented(alice, function, settings) -> None:
    settings.DEFAULT_MODEL_ID = "llama3:8b"

    response = run(alice, {"functionId": function["functionId"]})

    assert response.status_code == 400 and response.json()["code"] == "unknown_model"


def test_an_alias_runs_as_the_model_it_stands_for(alice, function) -> None:
    services.sync_catalogue()
    ModelCatalog.objects.create(model_id="fast", alias_of=MODEL)

    response = run(alice, {"functionId": function["functionId"], "modelId": "fast"})

    assert response.status_code == 202, response.content
    assert Job.objects.get().model_id == MODEL


@pytest.mark.parametrize("model_id", ["a b", "../x", "smollm2:135m\nrm", "<script>", "model;rm -rf /", "é",
                                      "x" * 201, "m" * 10_240, "\x00"], ids=lambda value: repr(value)[:20])
def test_odd_and_huge_model_ids_are_a_clean_400(alice, function, model_id) -> None:
    response = run(alice, {"functionId": function["functionId"], "modelId": model_id})

    assert response.status_code == 400, response.content
    assert response.json()["code"] in ("invalid_model_id", "unknown_model", "invalid")
    assert len(response.content) < 2000  # the 10 KB id is not echoed back
    assert not Job.objects.exists()


@pytest.mark.parametrize("model_id", [42, ["smollm2:135m"], {"id": "x"}])
def test_a_model_id_that_is_not_a_string_is_a_clean_400(alice, function, model_id) -> None:
    response = run(alice, {"functionId": function["functionId"], "modelId": model_id})

    assert response.status_code == 400, response.content
