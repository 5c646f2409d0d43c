"""Keeping the catalogue fresh without anyone calling /models: the beat task, the command, the admin."""
from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from models_catalog.models import AINode, ModelCatalog, ModelStatus
from tests.models_catalog.helpers import MODEL, Node

pytestmark = pytest.mark.django_db


def test_the_command_prints_what_it_found(use_nodes, openai_node, dead_url) -> None:
    use_nodes(openai_node, Node("down", "ollama", dead_url))
    out = io.StringIO()

    call_command("sync_models", "--timeout-ms", "1500", stdout=out)

    text = out.getvalue()
    assert f"node real-openai ({openai_node.url}): 1 model(s)" in text
    assert f"{MODEL} @ real-openai: available loaded" in text
    assert "node down" in text and "no answer" in text
    assert "warning:" in text
    assert ModelCatalog.objects.get(model_id=MODEL).status == ModelStatus.AVAILABLE


def test_the_task_syncs_the_catalogue(use_nodes, ollama_node) -> None:
    from models_catalog.tasks import sync_models

    use_nodes(ollama_node)

    sync_models.apply()

    assert ModelCatalog.objects.get(model_id=MODEL).node.name == "real-ollama"


def test_beat_runs_the_task_every_model_sync_interval(settings) -> None:
    from infra_ainode.celery import app

    app.loader.import_default_modules()  # as a worker or beat does at start: the apps' tasks modules register
    entry = settings.CELERY_BEAT_SCHEDULE["sync-models"]
    assert entry["task"] == "models_catalog.sync_models" and entry["task"] in app.tasks
    assert entry["schedule"] == settings.MODEL_SYNC_INTERVAL == 60
    assert entry["options"]["routing_key"] == entry["options"]["queue"]


@pytest.fixture
def synced(use_nodes, openai_node, ollama_node) -> None:
    use_nodes(openai_node, ollama_node)
    call_command("sync_models", stdout=io.StringIO())


def _action(admin_client, model: str, action: str, pks: list[int]):
    return admin_client.post(f"/admin/models_catalog/{model}/", {"action": action, "_selected_action": pks},
                             follow=True)


def test_the_admin_lists_nodes_and_models(admin_client, synced) -> None:
    nodes = admin_client.get("/admin/models_catalog/ainode/")
    models = admin_client.get("/admin/models_catalog/modelcatalog/")

    assert nodes.status_code == 200 and b"real-ollama" in nodes.content
    assert models.status_code == 200 and MODEL.encode() in models.content
    row = ModelCatalog.objects.first()
    assert admin_client.get(f"/admin/models_catalog/modelcatalog/{row.pk}/change/").status_code == 200


def test_the_admin_can_sync_now(admin_client, use_nodes, openai_node) -> None:
    use_nodes(openai_node)
    node = AINode.objects.create(name="real-openai", kind="openai", url=openai_node.url)

    response = _action(admin_client, "ainode", "sync_now", [node.pk])

    assert b"Node real-openai: 1 model(s) listed." in response.content
    assert ModelCatalog.objects.filter(node=node, status=ModelStatus.AVAILABLE).exists()


def test_the_admin_disables_and_enables_models(admin_client, synced) -> None:
    pks = list(ModelCatalog.objects.values_list("pk", flat=True))

    _action(admin_client, "modelcatalog", "disable", pks)
    assert set(ModelCatalog.objects.values_list("status", flat=True)) == {ModelStatus.DISABLED}

    _action(admin_client, "modelcatalog", "enable", pks)
    assert set(ModelCatalog.objects.values_list("status", flat=True)) == {ModelStatus.UNAVAILABLE}
    _action(admin_client, "modelcatalog", "sync_now", pks[:1])
    assert set(ModelCatalog.objects.values_list("status", flat=True)) == {ModelStatus.AVAILABLE}


def test_the_admin_disables_nodes(admin_client, synced) -> None:
    node = AINode.objects.get(name="real-ollama")

    _action(admin_client, "ainode", "disable", [node.pk])

    assert not AINode.objects.get(pk=node.pk).enabled


def test_the_admin_adds_an_alias(admin_client, synced) -> None:
    response = admin_client.post("/admin/models_catalog/modelcatalog/add/",
                                 {"model_id": "fast", "alias_of": MODEL, "enabled": "on"})

    assert response.status_code == 302, response.content
    alias = ModelCatalog.objects.get(model_id="fast")
    assert alias.is_alias and alias.node is None


def test_the_admin_refuses_an_alias_to_a_model_no_node_served(admin_client, synced) -> None:
    response = admin_client.post("/admin/models_catalog/modelcatalog/add/",
                                 {"model_id": "fast", "alias_of": "llama3:8b", "enabled": "on"})

    assert response.status_code == 200  # the form again, with its error
    assert not ModelCatalog.objects.filter(model_id="fast").exists()


def test_saving_a_model_disabled_in_the_admin_form_marks_it_disabled(admin_client, synced) -> None:
    row = ModelCatalog.objects.filter(node__name="real-openai").get()

    response = admin_client.post(f"/admin/models_catalog/modelcatalog/{row.pk}/change/", {})

    assert response.status_code == 302, response.content
    assert ModelCatalog.objects.get(pk=row.pk).status == ModelStatus.DISABLED
