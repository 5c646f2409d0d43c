"""Fixtures of the jobs tests that watch jobs live: the real model node in the catalogue, an event store of each
kind, and a live web server with a real worker beside it."""
from __future__ import annotations

import json
import os
from typing import Any

import pytest

from jobs.models import Job
from tests.fixtures.ai_node import ai_node  # noqa: F401  (the session fixture, used below)
from tests.support.brokers import REDIS_TEST_URL


@pytest.fixture
def model_node(transactional_db, settings, request: pytest.FixtureRequest):
    """The real local model server as the catalogue's only node (the worker reads the node from the catalogue)."""
    from models_catalog.services import sync_catalogue

    os.environ.setdefault("AI_NODE_URL", "http://127.0.0.1:8090")
    os.environ.setdefault("AI_NODE_OLLAMA_URL", "http://127.0.0.1:11435")
    node = request.getfixturevalue("ai_node")
    settings.AI_NODES = json.dumps([{"name": "events-node", "kind": "openai", "url": node.openai_url,
                                     "queue": settings.JOB_QUEUE}])
    sync_catalogue(timeout_ms=10_000)
    return node


@pytest.fixture(params=["database", "redis"])
def event_store_kind(request: pytest.FixtureRequest, settings) -> str:
    """Which event store both the web (live server) and the worker use."""
    if request.param == "redis":
        import redis

        settings.REDIS_URL = REDIS_TEST_URL
        client = redis.Redis.from_url(REDIS_TEST_URL)
        client.ping()
        request.addfinalizer(lambda: _forget_redis_keys(client))
    return request.param


def _forget_redis_keys(client: Any) -> None:
    for pk in Job.objects.values_list("pk", flat=True):
        client.delete(f"events:{pk}", f"result:{pk}")
    client.close()


@pytest.fixture
def live_stack(live_server, worker, model_node, _isolated_broker, settings):
    """A live web server and one worker on the same database, broker and (per `settings.REDIS_URL`) store."""
    worker(_isolated_broker)
    return live_server
