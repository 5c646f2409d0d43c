"""/healthz and /readyz: unauthenticated, cheap, a JSON detail per dependency, and 503 naming the one that is down.

Every dependency is real (the database, the broker, Redis, the AI node); "down" is a 127.0.0.1 port where nothing
listens.
"""
from __future__ import annotations

import time

import pytest

from tests.fixtures.ai_node import AINode
from tests.support.brokers import REDIS_TEST_URL, sqs_broker
from tests.support.ports import free_port


@pytest.fixture
def all_up(transactional_db, settings, ai_node: AINode) -> None:
    # transactional_db: the checks run in threads of their own, with connections of their own.
    settings.AI_NODE_URL = ai_node.openai_url
    settings.AI_NODE_KIND = "openai"
    settings.AI_NODES = ""
    settings.REDIS_URL = REDIS_TEST_URL
    settings.READYZ_TIMEOUT = 3000  # generous: the machine may be loaded; what is down fails at once anyway
    settings.READYZ_CACHE_SECONDS = 0  # each test changes what is up: every probe checks anew


def test_healthz_answers_without_credentials_or_a_database(anonymous):
    response = anonymous.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["Cache-Control"].startswith("max-age=0")


def test_readyz_is_ok_when_every_dependency_answers(anonymous, all_up):
    response = anonymous.get("/readyz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok" and body["down"] == []
    assert set(body["checks"]) == {"database", "broker", "redis", "ai_nodes"}
    assert all(check["ok"] and isinstance(check["ms"], int) for check in body["checks"].values())
    assert body["checks"]["ai_nodes"]["nodes"]["default"]["ok"] is True


def test_readyz_leaves_redis_out_when_it_is_not_configured(anonymous, all_up, settings):
    settings.REDIS_URL = ""
    body = anonymous.get("/readyz").json()
    assert "redis" not in body["checks"] and body["status"] == "ok"


def test_readyz_names_the_broker_when_sqs_does_not_answer_and_answers_within_its_timeout(anonymous, all_up, settings,
                                                                                         use_broker, short_tmp):
    use_broker(sqs_broker(short_tmp / "var", ("127.0.0.1", free_port())))
    settings.READYZ_TIMEOUT = 1000  # botocore retries a refused connection for longer than this
    started = time.monotonic()
    response = anonymous.get("/readyz")
    assert time.monotonic() - started < 1.0 + 2.0
    assert response.status_code == 503, response.content
    body = response.json()
    assert body["status"] == "unavailable" and body["down"] == ["broker"]
    assert body["checks"]["broker"]["ok"] is False and body["checks"]["broker"]["error"]
    assert body["checks"]["database"]["ok"] is True


def test_readyz_checks_a_working_sqs_broker_too(anonymous, all_up, use_broker, short_tmp, moto_endpoint):
    use_broker(sqs_broker(short_tmp / "var", moto_endpoint))
    body = anonymous.get("/readyz").json()
    assert body["checks"]["broker"] == {"ok": True, "transport": "sqs", "ms": body["checks"]["broker"]["ms"]}


def test_readyz_names_redis_when_it_does_not_answer(anonymous, all_up, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    response = anonymous.get("/readyz")
    assert response.status_code == 503
    assert response.json()["down"] == ["redis"]


def test_readyz_names_the_ai_nodes_when_no_node_answers(anonymous, all_up, settings):
    settings.AI_NODE_URL = f"http://127.0.0.1:{free_port()}"
    response = anonymous.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["down"] == ["ai_nodes"]
    assert body["checks"]["ai_nodes"]["nodes"]["default"]["ok"] is False


def test_readyz_is_ok_while_at_least_one_of_two_nodes_answers(anonymous, all_up, settings, ai_node: AINode):
    settings.AI_NODES = (f'[{{"name": "up", "kind": "openai", "url": "{ai_node.openai_url}"}},'
                         f' {{"name": "down", "kind": "openai", "url": "http://127.0.0.1:{free_port()}"}}]')
    response = anonymous.get("/readyz")
    assert response.status_code == 200, response.content
    nodes = response.json()["checks"]["ai_nodes"]["nodes"]
    assert nodes["up"]["ok"] is True and nodes["down"]["ok"] is False


def test_readyz_tells_a_stranger_only_what_is_up_and_the_operator_everything(anonymous, all_up, settings):
    stranger = {"REMOTE_ADDR": "203.0.113.9", "HTTP_HOST": "attacker.example"}
    body = anonymous.get("/readyz", **stranger).json()
    assert body["checks"] == {name: {"ok": True} for name in ("database", "broker", "redis", "ai_nodes")}
    assert settings.AI_NODE_URL not in str(body) and "sqlite" not in str(body)

    settings.METRICS_TOKEN = "scrape-token"
    operator = anonymous.get("/readyz", HTTP_AUTHORIZATION="Bearer scrape-token", **stranger).json()
    assert operator["checks"]["ai_nodes"]["nodes"]["default"] == {"ok": True, "url": settings.AI_NODE_URL}
    assert anonymous.get("/readyz", HTTP_AUTHORIZATION="Bearer wrong", **stranger).json()["checks"] == body["checks"]


def test_readyz_answers_a_flood_of_probes_from_one_round_of_checks(anonymous, all_up, settings):
    assert anonymous.get("/readyz").status_code == 200  # checked now (the fixture's period is 0) and kept
    settings.READYZ_CACHE_SECONDS = 60
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # down now, but not asked again within the period
    assert anonymous.get("/readyz").status_code == 200
    settings.READYZ_CACHE_SECONDS = 0
    assert anonymous.get("/readyz").json()["down"] == ["redis"]


def test_the_probes_are_exempt_from_the_https_redirect(anonymous, all_up, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert anonymous.get("/healthz").status_code == 200
    assert anonymous.get("/readyz").status_code == 200
    assert anonymous.get("/metrics").status_code == 200
    assert anonymous.get("/models").status_code == 301


def test_the_probes_answer_an_orchestrator_that_asks_by_the_pods_address(anonymous, all_up):
    pod = {"HTTP_HOST": "10.0.3.7:8000"}  # in no ALLOWED_HOSTS
    assert anonymous.get("/healthz", **pod).status_code == 200
    assert anonymous.get("/readyz", **pod).status_code == 200
    assert anonymous.get("/models", **pod).status_code == 400


def test_the_probes_answer_only_get(anonymous):
    assert anonymous.post("/healthz").status_code == 405
