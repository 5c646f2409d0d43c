"""route_model and node_named: which node serves a model, read from the catalogue."""
from __future__ import annotations

import pytest

from core.errors import DomainError
from jobs.models import Job
from models_catalog import services
from models_catalog.models import AINode, ModelCatalog
from tests.models_catalog.helpers import MODEL, Node
from tests.support.jobs import make_job

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_nodes(use_nodes, openai_node, ollama_node) -> list[Node]:
    """The same real node registered twice: b-openai and a-ollama, on queues of their own."""
    nodes = use_nodes(Node("b-openai", "openai", openai_node.url, queue="gpu-b"),
                      Node("a-ollama", "ollama", ollama_node.url, queue="gpu-a"))
    services.sync_catalogue()
    return nodes


def test_it_routes_a_model_to_the_node_that_serves_it(use_nodes, openai_node) -> None:
    use_nodes(openai_node)
    services.sync_catalogue()

    node = services.route_model(MODEL)

    assert (node.name, node.kind, node.url, node.queue, node.model_id) == (
        "real-openai", "openai", openai_node.url, "jobs", MODEL)


def test_on_first_start_it_syncs_once_before_routing(use_nodes, openai_node) -> None:
    use_nodes(openai_node)
    assert not ModelCatalog.objects.exists()

    assert services.route_model(MODEL).name == "real-openai"
    assert ModelCatalog.objects.filter(model_id=MODEL).exists()


def test_it_refuses_an_unknown_model_listing_the_available_ones(use_nodes, openai_node) -> None:
    use_nodes(openai_node)

    with pytest.raises(DomainError) as caught:
        services.route_model("llama3:8b")

    error = caught.value
    assert (error.code, error.status) == ("unknown_model", 400)
    assert error.extra["available"] == [MODEL]
    assert "unknown" in error.detail


def test_with_every_node_down_nothing_is_invented(use_nodes, dead_url, settings) -> None:
    use_nodes(Node("down", "openai", dead_url))

    with pytest.raises(DomainError) as caught:
        services.route_model(settings.DEFAULT_MODEL_ID)

    assert caught.value.code == "unknown_model" and caught.value.extra["available"] == []


def test_a_disabled_model_is_refused(use_nodes, openai_node) -> None:
    use_nodes(openai_node)
    services.sync_catalogue()
    services.set_models_enabled(models=ModelCatalog.objects.filter(model_id=MODEL), enabled=False)

    with pytest.raises(DomainError) as caught:
        services.route_model(MODEL)

    assert caught.value.code == "unknown_model" and "disabled" in caught.value.detail
    assert caught.value.extra["available"] == []


def test_a_reenabled_model_routes_again_after_the_next_sync(use_nodes, openai_node) -> None:
    use_nodes(openai_node)
    services.sync_catalogue()
    services.set_models_enabled(models=ModelCatalog.objects.all(), enabled=False)
    services.set_models_enabled(models=ModelCatalog.objects.all(), enabled=True)

    services.sync_catalogue()

    assert services.route_model(MODEL).name == "real-openai"


def test_two_nodes_with_the_model_pick_by_name_when_all_else_is_equal(two_nodes) -> None:
    assert [services.route_model(MODEL).name for _ in range(3)] == ["a-ollama"] * 3


def test_a_node_holding_the_model_in_memory_wins(two_nodes) -> None:
    ModelCatalog.objects.filter(node__name="a-ollama").update(loaded=False)

    assert services.route_model(MODEL).name == "b-openai"


def test_the_node_with_fewer_queued_jobs_wins(two_nodes, alice) -> None:
    job = make_job(alice, "print(1)")
    Job.objects.filter(pk=job.pk).update(node="a-ollama")

    node = services.route_model(MODEL, queued_jobs=Job.objects.queued_by_node)

    assert (node.name, node.queue) == ("b-openai", "gpu-b")


def test_without_queue_counts_ties_go_by_name(two_nodes, alice) -> None:
    Job.objects.filter(pk=make_job(alice, "print(1)").pk).update(node="a-ollama")

    assert services.route_model(MODEL).name == "a-ollama"


def test_a_disabled_node_is_not_routed_to(two_nodes) -> None:
    services.set_nodes_enabled(nodes=AINode.objects.filter(name="a-ollama"), enabled=False)

    assert services.route_model(MODEL).name == "b-openai"


def test_an_alias_routes_to_the_model_it_stands_for(use_nodes, openai_node) -> None:
    use_nodes(openai_node)
    services.sync_catalogue()
    ModelCatalog.objects.create(model_id="fast", alias_of=MODEL)

    node = services.route_model("fast")

    assert (node.name, node.model_id) == ("real-openai", MODEL)
    assert services.available_model_ids() == ["fast", MODEL]


def test_a_disabled_alias_is_refused(use_nodes, openai_node) -> None:
    use_nodes(openai_node)
    services.sync_catalogue()
    ModelCatalog.objects.create(model_id="fast", alias_of=MODEL, enabled=False)

    with pytest.raises(DomainError) as caught:
        services.route_model("fast")

    assert caught.value.code == "unknown_model" and caught.value.extra["available"] == [MODEL]


def test_an_alias_cannot_shadow_or_invent_a_model(use_nodes, openai_node) -> None:
    from django.core.exceptions import ValidationError

    use_nodes(openai_node)
    services.sync_catalogue()

    with pytest.raises(ValidationError):
        ModelCatalog(model_id=MODEL, alias_of=MODEL).full_clean()
    with pytest.raises(ValidationError):
        ModelCatalog(model_id="fast", alias_of="no-such-model").full_clean()
    ModelCatalog(model_id="fast", alias_of=MODEL).full_clean()


@pytest.mark.parametrize("model_id", ["", " ", "a b", "../../etc/passwd", "model\x00id", "x" * 201, "m" * 10_240,
                                      "é-model", "$(reboot)", None, 42, ["smollm2:135m"]],
                         ids=lambda value: repr(value)[:20])
def test_it_refuses_ids_that_cannot_be_model_ids(model_id) -> None:
    with pytest.raises(DomainError) as caught:
        services.route_model(model_id)

    assert (caught.value.code, caught.value.status) == ("invalid_model_id", 400)
    assert len(caught.value.detail) < 300


def test_node_named_finds_settings_and_admin_nodes(use_nodes, openai_node, ai_node) -> None:
    use_nodes(openai_node)
    AINode.objects.create(name="admin-node", kind="ollama", url=ai_node.ollama_url, queue="gpu-2")

    assert services.node_named("real-openai").url == openai_node.url  # from settings, before any sync
    assert services.node_named("admin-node").queue == "gpu-2"
    assert services.node_named("nope") is None


def test_node_named_ignores_a_disabled_node(use_nodes, openai_node) -> None:
    use_nodes(openai_node)
    services.sync_catalogue()
    AINode.objects.filter(name="real-openai").update(enabled=False)

    assert services.node_named("real-openai") is None


def test_malformed_ai_nodes_is_a_configuration_error(settings) -> None:
    from django.core.exceptions import ImproperlyConfigured

    for value in ("not json", '{"name": "x"}', '[{"name": "x"}]', '[{"name": "x", "url": "http://a", "kind": "grpc"}]',
                  '[{"name": "x", "url": "http://a"}, {"name": "x", "url": "http://b"}]'):
        settings.AI_NODES = value
        with pytest.raises(ImproperlyConfigured):
            services.configured_nodes()
