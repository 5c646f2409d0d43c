"""A node that comes back serves jobs again at once: before refusing a model whose nodes did not answer at the
last sync, POST /run asks those nodes again (bounded by AI_NODE_TIMEOUT, at most once per AI_NODE_RECHECK_SECONDS
per node). The node is the real one, seen through a relay that the test stops and starts on the same port."""
import time

import pytest

from jobs.models import Job
from models_catalog.models import AINode, ModelCatalog
from models_catalog.services import sync_catalogue
from tests.models_catalog.helpers import MODEL, Node
from tests.support.jobs import deploy, submit


@pytest.fixture
def node_that_went_down(use_nodes, relay, ai_node, settings):
    """A node that served MODEL at one sync and did not answer at the next."""
    first = relay(ai_node.openai_url)
    use_nodes(Node("flaky", "openai", first.url), timeout_ms=1000)
    assert sync_catalogue().models
    first.stop()
    sync_catalogue()
    assert ModelCatalog.objects.get(model_id=MODEL, node__name="flaky").status == "unavailable"
    return first


def test_a_node_that_came_back_serves_a_job_before_the_next_sync(alice, node_that_went_down, relay, ai_node,
                                                                 settings):
    settings.AI_NODE_RECHECK_SECONDS = 0
    function = deploy(alice, "def handler(event, context):\n    return 1\n", default_model=MODEL)
    port = int(node_that_went_down.url.rsplit(":", 1)[1])
    relay(ai_node.openai_url, port=port)  # the node is back, on its old address
    response = submit(alice, function["functionId"])
    assert response.status_code == 202, response.content
    assert Job.objects.get(pk=response.json()["jobId"]).node == "flaky"


def test_a_node_still_down_is_refused_within_the_node_timeout(alice, node_that_went_down, settings):
    settings.AI_NODE_RECHECK_SECONDS = 0
    function = deploy(alice, "def handler(event, context):\n    return 1\n", default_model=MODEL)
    started = time.monotonic()
    response = submit(alice, function["functionId"])
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "unknown_model"
    assert time.monotonic() - started < settings.AI_NODE_TIMEOUT / 1000 + 1.5


def test_a_hung_node_is_asked_again_at_most_once_per_interval(alice, use_nodes, hung_url, settings):
    use_nodes(Node("hung", "openai", hung_url), timeout_ms=700)
    settings.AI_NODE_RECHECK_SECONDS = 60
    node = AINode.objects.create(name="hung", kind="openai", url=hung_url, queue="jobs")
    ModelCatalog.objects.create(node=node, model_id=MODEL, name=MODEL, status="unavailable")
    function = deploy(alice, "def handler(event, context):\n    return 1\n", default_model=MODEL)
    timings = []
    for _ in range(3):
        started = time.monotonic()
        assert submit(alice, function["functionId"]).status_code == 400
        timings.append(time.monotonic() - started)
    assert timings[0] >= 0.6  # the first refusal waited for the node
    assert max(timings[1:]) < 0.5  # the next ones did not ask it again
