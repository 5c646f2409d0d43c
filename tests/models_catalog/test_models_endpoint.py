"""GET /models and /api/v1/models/ against the real local AI node, in its OpenAI and Ollama forms."""
from __future__ import annotations

import pytest

from models_catalog.models import AINode, ModelCatalog, ModelStatus
from tests.models_catalog.helpers import MODEL, Node, by_node, models_of

pytestmark = pytest.mark.django_db

ENTRY_KEYS = {"id", "name", "size", "status", "node", "details", "loaded", "aliases"}


@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_it_lists_the_real_nodes_model_with_its_details(alice, use_nodes, openai_node, ollama_node, kind) -> None:
    node = openai_node if kind == "openai" else ollama_node
    use_nodes(node)

    [model] = models_of(alice.client.get("/models"))

    assert set(model) == ENTRY_KEYS
    assert model["id"] == MODEL
    assert model["node"] == node.name
    assert model["status"] == "available"
    assert model["loaded"] is True
    assert isinstance(model["size"], int) and model["size"] > 50_000_000
    assert model["details"]["parameter_size"] == "135M"
    assert model["details"]["quantization"] == "Q4_1"
    if kind == "ollama":  # llama.cpp's OpenAI listing does not name the family; the Ollama front does
        assert model["details"]["family"] == "llama"


def test_the_api_v1_route_answers_the_same(alice, use_nodes, openai_node) -> None:
    use_nodes(openai_node)

    plain = alice.client.get("/models").json()
    versioned = alice.client.get("/api/v1/models/").json()

    assert versioned == plain
    assert "warning" not in plain


def test_the_single_node_setting_still_works(alice, settings, ai_node) -> None:
    settings.AI_NODES = ""
    settings.AI_NODE_URL, settings.AI_NODE_KIND = ai_node.openai_url, "openai"

    [model] = models_of(alice.client.get("/models"))

    assert (model["id"], model["node"], model["status"]) == (MODEL, "default", "available")


def test_it_needs_an_api_key(anonymous, use_nodes, openai_node) -> None:
    use_nodes(openai_node)

    response = anonymous.get("/models")

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


def test_two_nodes_with_the_same_model_are_both_listed(alice, use_nodes, openai_node, ollama_node) -> None:
    use_nodes(openai_node, ollama_node)

    models = by_node(alice.client.get("/models"))

    assert set(models) == {f"{MODEL}@real-openai", f"{MODEL}@real-ollama"}
    assert all(m["status"] == "available" for m in models.values())


def test_it_records_what_it_saw_in_the_catalogue(alice, use_nodes, openai_node) -> None:
    use_nodes(openai_node)

    alice.client.get("/models")

    row = ModelCatalog.objects.get(model_id=MODEL)
    assert row.node.name == "real-openai" and row.status == ModelStatus.AVAILABLE
    assert row.last_seen_at is not None and row.first_seen_at <= row.last_seen_at
    node = AINode.objects.get(name="real-openai")
    assert node.last_seen_at is not None and node.last_error == ""


def test_a_second_listing_updates_rows_rather_than_adding_them(alice, use_nodes, openai_node) -> None:
    use_nodes(openai_node)
    alice.client.get("/models")
    first = ModelCatalog.objects.get(model_id=MODEL)

    alice.client.get("/models")

    second = ModelCatalog.objects.get(model_id=MODEL)
    assert second.pk == first.pk and second.first_seen_at == first.first_seen_at
    assert second.last_seen_at >= first.last_seen_at


def test_a_disabled_model_is_listed_as_disabled(alice, use_nodes, openai_node) -> None:
    use_nodes(openai_node)
    alice.client.get("/models")
    row = ModelCatalog.objects.get(model_id=MODEL)
    row.enabled = False
    row.save()

    [model] = models_of(alice.client.get("/models"))

    assert model["status"] == "disabled" and model["loaded"] is False


def test_a_disabled_node_is_not_asked_and_its_models_show_disabled(alice, use_nodes, openai_node, ollama_node) -> None:
    use_nodes(openai_node, ollama_node)
    alice.client.get("/models")
    AINode.objects.filter(name="real-ollama").update(enabled=False)

    models = by_node(alice.client.get("/models"))

    assert models[f"{MODEL}@real-ollama"]["status"] == "disabled"
    assert models[f"{MODEL}@real-openai"]["status"] == "available"


def test_an_alias_is_shown_on_the_model_it_stands_for(alice, use_nodes, openai_node) -> None:
    use_nodes(openai_node)
    alice.client.get("/models")
    ModelCatalog.objects.create(model_id="fast", alias_of=MODEL)

    [model] = models_of(alice.client.get("/models"))

    assert model["aliases"] == ["fast"]


def test_a_node_added_in_the_admin_is_asked_too(alice, use_nodes, openai_node, ai_node) -> None:
    use_nodes(openai_node)
    AINode.objects.create(name="admin-ollama", kind="ollama", url=ai_node.ollama_url, queue="gpu-2")

    models = by_node(alice.client.get("/models"))

    assert set(models) == {f"{MODEL}@real-openai", f"{MODEL}@admin-ollama"}


def test_a_node_dropped_from_settings_leaves_the_catalogue(alice, use_nodes, openai_node, ollama_node) -> None:
    use_nodes(openai_node, ollama_node)
    alice.client.get("/models")

    use_nodes(openai_node)
    models = by_node(alice.client.get("/models"))

    assert set(models) == {f"{MODEL}@real-openai"}
    assert not AINode.objects.filter(name="real-ollama").exists()


def test_settings_win_over_stale_node_rows(alice, use_nodes, openai_node, dead_url) -> None:
    use_nodes(Node(openai_node.name, "openai", dead_url))
    alice.client.get("/models")

    use_nodes(openai_node)
    [model] = models_of(alice.client.get("/models"))

    assert model["status"] == "available"
    assert AINode.objects.get(name=openai_node.name).url == openai_node.url
