"""GET /models when nodes misbehave: stopped, hung, answering garbage, HTTP 500 or nothing, losing a model."""
from __future__ import annotations

import time

import pytest

from models_catalog.models import AINode, ModelCatalog
from tests.models_catalog.helpers import MODEL, Node, by_node, models_of
from tests.support.jobs import deploy

pytestmark = pytest.mark.django_db

TIMEOUT_MS = 1000
# The answer may exceed the timeout by the time of a few queries; this bound is generous on purpose.
MARGIN_S = 1.5


def test_a_node_stopped_midway_keeps_its_models_as_unavailable_with_a_warning(alice, use_nodes, relay,
                                                                             openai_node) -> None:
    through = relay(openai_node.url)
    use_nodes(Node("relayed", "openai", through.url))
    [before] = models_of(alice.client.get("/models"))
    assert before["status"] == "available"

    through.stop()
    response = alice.client.get("/models")

    [after] = models_of(response)
    assert (after["id"], after["node"], after["status"], after["loaded"]) == (MODEL, "relayed", "unavailable", False)
    assert after["details"] == before["details"]  # the last known catalogue, not an invented entry
    assert "relayed" in response.json()["warning"]
    assert "node_unreachable" in AINode.objects.get(name="relayed").last_error


def test_a_stopped_node_never_seen_lists_nothing_and_warns(alice, use_nodes, dead_url) -> None:
    use_nodes(Node("never-up", "ollama", dead_url))

    response = alice.client.get("/models")

    assert models_of(response) == []
    assert "never-up" in response.json()["warning"]


def test_a_stopped_node_does_not_hide_a_live_one(alice, use_nodes, openai_node, dead_url) -> None:
    use_nodes(openai_node, Node("stopped", "openai", dead_url))

    response = alice.client.get("/models")

    assert {m["node"]: m["status"] for m in models_of(response)} == {"real-openai": "available"}
    assert "'stopped' did not answer" in response.json()["warning"]


@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_a_hung_node_costs_no_more_than_the_timeout(alice, use_nodes, openai_node, hung_url, kind) -> None:
    use_nodes(openai_node, Node("hung", kind, hung_url), timeout_ms=TIMEOUT_MS)

    started = time.monotonic()
    response = alice.client.get("/models")
    elapsed = time.monotonic() - started

    assert elapsed < TIMEOUT_MS / 1000 + MARGIN_S, f"took {elapsed:.2f} s"
    assert {m["node"]: m["status"] for m in models_of(response)} == {"real-openai": "available"}
    assert "'hung' did not answer (node_timeout" in response.json()["warning"]


def test_a_node_that_hangs_after_answering_once_keeps_its_models_unavailable(alice, use_nodes, scripted_node,
                                                                            hung_url) -> None:
    scripted_node.openai_models("mistral:7b")
    use_nodes(Node("flaky", "openai", scripted_node.url), timeout_ms=TIMEOUT_MS)
    alice.client.get("/models")

    use_nodes(Node("flaky", "openai", hung_url), timeout_ms=TIMEOUT_MS)
    started = time.monotonic()
    response = alice.client.get("/models")

    assert time.monotonic() - started < TIMEOUT_MS / 1000 + MARGIN_S
    assert [(m["id"], m["status"]) for m in models_of(response)] == [("mistral:7b", "unavailable")]
    assert "warning" in response.json()


@pytest.mark.parametrize(("kind", "path", "status", "body"), [
    ("openai", "/v1/models", 200, b"<html>not json</html>"),
    ("openai", "/v1/models", 200, b'{"data": "nope"}'),
    ("openai", "/v1/models", 200, b'[1, 2, 3]'),
    ("openai", "/v1/models", 200, b'{"data": [{"id": "x", "meta": "not an object"}]}'),
    ("openai", "/v1/models", 500, b'{"error": {"message": "boom"}}'),
    ("ollama", "/api/tags", 200, b'{"models": ["not", "objects"]}'),
    ("ollama", "/api/tags", 200, b'\x00\xff garbage'),
    ("ollama", "/api/tags", 500, b'{"error": "boom"}'),
    ("ollama", "/api/tags", 503, b''),
])
def test_a_node_answering_garbage_or_an_error_is_a_warning_not_a_500(alice, use_nodes, scripted_node, openai_node,
                                                                    kind, path, status, body) -> None:
    scripted_node.routes[path] = (status, body)
    use_nodes(openai_node, Node("broken", kind, scripted_node.url))

    response = alice.client.get("/models")

    assert {m["node"] for m in models_of(response)} == {"real-openai"}
    # Either it did not answer in a way we could read, or nothing in its answer was a model.
    assert "'broken' did not answer" in response.json()["warning"] or "'broken' lists no models" in \
        response.json()["warning"]


@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_a_node_that_lists_no_models_is_said_so(alice, use_nodes, scripted_node, kind) -> None:
    scripted_node.openai_models()
    scripted_node.ollama_models()
    use_nodes(Node("empty", kind, scripted_node.url))

    response = alice.client.get("/models")

    assert models_of(response) == []
    assert "'empty' lists no models" in response.json()["warning"]


def test_ids_a_node_lists_that_no_job_could_use_are_skipped(alice, use_nodes, scripted_node) -> None:
    scripted_node.openai_models("good:1b", "", "bad id with spaces", "x" * 300, "-leading-dash")
    use_nodes(Node("odd", "openai", scripted_node.url))

    models = models_of(alice.client.get("/models"))

    assert [m["id"] for m in models] == ["good:1b"]


def test_a_model_that_disappears_is_unavailable_and_refused_on_run(alice, use_nodes, scripted_node) -> None:
    scripted_node.openai_models("stays:1b", "goes:1b")
    use_nodes(Node("shrinking", "openai", scripted_node.url))
    function = deploy(alice, "def handler(event, context):\n    return 1\n")
    alice.client.get("/models")
    assert alice.client.post("/run", {"functionId": function["functionId"], "modelId": "goes:1b"}, format="json",
                             HTTP_X_ASYNC="true").status_code == 202

    scripted_node.openai_models("stays:1b")
    models = by_node(alice.client.get("/models"))
    response = alice.client.post("/run", {"functionId": function["functionId"], "modelId": "goes:1b"}, format="json",
                                 HTTP_X_ASYNC="true")

    assert models["goes:1b@shrinking"]["status"] == "unavailable"
    assert models["stays:1b@shrinking"]["status"] == "available"
    assert "warning" not in alice.client.get("/models").json()  # the node answered: nothing to warn of
    assert response.status_code == 400
    assert response.json()["code"] == "unknown_model"
    assert response.json()["available"] == ["stays:1b"]


def test_a_model_that_comes_back_is_available_again(alice, use_nodes, scripted_node) -> None:
    scripted_node.openai_models("back:1b")
    use_nodes(Node("n", "openai", scripted_node.url))
    alice.client.get("/models")
    scripted_node.openai_models()
    alice.client.get("/models")
    first_seen = ModelCatalog.objects.get(model_id="back:1b").first_seen_at

    scripted_node.openai_models("back:1b")
    [model] = models_of(alice.client.get("/models"))

    assert model["status"] == "available"
    assert ModelCatalog.objects.get(model_id="back:1b").first_seen_at == first_seen


def test_no_node_at_all_answers_an_empty_list_with_a_warning(alice, use_nodes) -> None:
    use_nodes()

    response = alice.client.get("/models")

    assert models_of(response) == []
    assert "No AI node" in response.json()["warning"]


def test_a_node_with_a_url_we_cannot_call_is_a_warning(alice, use_nodes, openai_node) -> None:
    use_nodes(openai_node, Node("odd-url", "openai", "ftp://127.0.0.1:21"))

    response = alice.client.get("/models")

    assert {m["node"] for m in models_of(response)} == {"real-openai"}
    assert "'odd-url' did not answer (node_misconfigured" in response.json()["warning"]
