"""A client made with `keep_alive` carries its calls to the node over kept-alive connections: the real node (both
kinds) seen through a relay that counts the connections made to it and can close them as a node closes idle ones.
Only a connection whose answer was read to its end is kept; a request is sent again only when the kept connection
had been closed before the node read it.
"""
from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from nodeclient import Cancellation, Completion, NodeError, client_for
from tests.fixtures.ai_node import AINode
from tests.support.nodes import Listener, Relay

KINDS = ("openai", "ollama")
HELLO = [{"role": "user", "content": "Say hello."}]
SHORT = {"temperature": 0, "seed": 42, "max_tokens": 3}


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def relayed(kind: str, ai_node: AINode) -> Iterator[Relay]:
    relay = Relay(ai_node.openai_url if kind == "openai" else ai_node.ollama_url)
    yield relay
    relay.stop()


def _final(stream: Iterator[str | Completion]) -> Completion:
    *_, final = stream
    assert isinstance(final, Completion)
    return final


def test_whole_answers_one_after_another_share_one_connection(kind: str, relayed: Relay, ai_node: AINode) -> None:
    client = client_for(kind, relayed.url, 30, keep_alive=2)
    answers = [client.generate(ai_node.model_id, "Say hi.", **SHORT), client.chat(ai_node.model_id, HELLO, **SHORT),
               client.chat(ai_node.model_id, HELLO, **SHORT)]
    client.close()

    assert all(answer.usage.known and answer.usage.completion_tokens <= 3 for answer in answers)
    assert relayed.accepted == 1


def test_streams_share_a_connection_where_the_node_keeps_it_open(kind: str, relayed: Relay, ai_node: AINode) -> None:
    client = client_for(kind, relayed.url, 30, keep_alive=2)
    answers = [_final(client.stream_chat(ai_node.model_id, HELLO, **SHORT)),
               _final(client.stream_generate(ai_node.model_id, "Say hi.", **SHORT)),
               client.chat(ai_node.model_id, HELLO, **SHORT)]
    client.close()

    assert all(answer.usage.known for answer in answers)
    # The Ollama front keeps a connection open after a streamed answer, as Ollama and vLLM do; llama.cpp closes
    # it, and the next call finds that out before sending anything, on a new connection.
    assert relayed.accepted == (1 if kind == "ollama" else 3)


def test_a_client_without_keep_alive_opens_a_connection_per_call(kind: str, relayed: Relay, ai_node: AINode) -> None:
    client = client_for(kind, relayed.url, 30)
    client.chat(ai_node.model_id, HELLO, **SHORT)
    client.chat(ai_node.model_id, HELLO, **SHORT)

    assert relayed.accepted == (2 if kind == "ollama" else 3)  # kind openai asks the node for its models first


def test_a_connection_the_node_closed_while_idle_is_replaced(kind: str, relayed: Relay, ai_node: AINode) -> None:
    client = client_for(kind, relayed.url, 30, keep_alive=1)
    first = client.chat(ai_node.model_id, HELLO, **SHORT)
    relayed.drop_connections()  # as llama.cpp does to a connection idle for a few seconds

    second = client.chat(ai_node.model_id, HELLO, **SHORT)
    client.close()

    assert second.usage == first.usage  # the same call, answered once, with the node's counts
    assert relayed.accepted == 2


def test_a_cancelled_stream_does_not_leave_its_connection(kind: str, relayed: Relay, ai_node: AINode) -> None:
    client = client_for(kind, relayed.url, 30, keep_alive=1)
    cancellation = Cancellation()
    stream = client.stream_chat(ai_node.model_id, [{"role": "user", "content": "Tell me a long story."}],
                                cancel=cancellation, temperature=0, seed=42, max_tokens=200)
    assert isinstance(next(stream), str)
    cancellation.cancel("the script hung up")
    with pytest.raises(NodeError) as caught:
        list(stream)
    assert caught.value.code == "call_cancelled"

    assert client.chat(ai_node.model_id, HELLO, **SHORT).usage.known
    client.close()
    assert relayed.accepted == 2


def test_an_abandoned_stream_does_not_leave_its_connection(kind: str, relayed: Relay, ai_node: AINode) -> None:
    client = client_for(kind, relayed.url, 30, keep_alive=1)
    stream = client.stream_chat(ai_node.model_id, HELLO, temperature=0, seed=42, max_tokens=64)
    assert isinstance(next(stream), str)
    stream.close()  # the node sees its client gone and stops generating

    assert client.chat(ai_node.model_id, HELLO, **SHORT).usage.known
    client.close()
    assert relayed.accepted == 2


@pytest.fixture
def closes_unanswered() -> Iterator[Listener]:
    """A node that reads each request and closes the connection without answering it."""

    def read_then_close(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.close()

    listener = Listener(read_then_close)
    yield listener
    listener.close()


def test_a_new_connection_closed_unanswered_is_not_sent_again(kind: str, closes_unanswered: Listener) -> None:
    client = client_for(kind, closes_unanswered.url, 5, keep_alive=1)
    with pytest.raises(NodeError) as caught:
        client.chat("m", HELLO)

    # The node may have started the call: sending it again could run (and bill) it twice.
    assert caught.value.code in ("node_bad_response", "node_unreachable")
    assert closes_unanswered.accepted == 1


def test_after_close_calls_open_their_own_connections_and_keep_none(kind: str, relayed: Relay,
                                                                     ai_node: AINode) -> None:
    client = client_for(kind, relayed.url, 30, keep_alive=1)
    client.chat(ai_node.model_id, HELLO, **SHORT)
    client.close()
    client.chat(ai_node.model_id, HELLO, **SHORT)
    client.chat(ai_node.model_id, HELLO, **SHORT)

    assert relayed.accepted == 3
