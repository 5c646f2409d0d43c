"""Fixtures of the catalogue tests: the nodes of tests/models_catalog/helpers.py, set up and torn down."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from tests.fixtures.ai_node import AINode
from tests.models_catalog.helpers import Node, ScriptedNode
from tests.support.nodes import Listener, Relay
from tests.support.ports import free_port


@pytest.fixture
def use_nodes(settings) -> Callable[..., list[Node]]:
    """Configure AI_NODES for this test (the settings fixture restores it afterwards)."""

    def use(*nodes: Node, timeout_ms: int | None = None) -> list[Node]:
        settings.AI_NODES = json.dumps([node.as_setting() for node in nodes])
        if timeout_ms is not None:
            settings.AI_NODE_TIMEOUT = timeout_ms
        return list(nodes)

    return use


@pytest.fixture
def openai_node(ai_node: AINode) -> Node:
    return Node("real-openai", "openai", ai_node.openai_url)


@pytest.fixture
def ollama_node(ai_node: AINode) -> Node:
    return Node("real-ollama", "ollama", ai_node.ollama_url)


@pytest.fixture
def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def hung_url() -> Iterator[str]:
    """A node that accepts connections and never answers a byte."""
    listener = Listener(lambda conn: None)
    yield listener.url
    listener.close()


@pytest.fixture
def relay() -> Iterator[Callable[..., Relay]]:
    """A factory of relays to a real node (`relay(url, port=0)`); all stopped afterwards."""
    started: list[Relay] = []

    def start(upstream_url: str, port: int = 0) -> Relay:
        started.append(Relay(upstream_url, port))
        return started[-1]

    yield start
    for item in started:
        item.stop()


@pytest.fixture
def scripted_node() -> Iterator[ScriptedNode]:
    node = ScriptedNode().start()
    yield node
    node.stop()
