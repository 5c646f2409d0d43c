"""compose.yaml cannot be pulled here (no registry); what can be checked without one is checked: its shape."""
from __future__ import annotations

import yaml

from tests.support import REPO_ROOT


def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())


def test_compose_runs_the_whole_stack_from_one_application_image():
    services = compose()["services"]
    processes = ("web", "worker", "outbound", "beat", "migrate")
    assert {*processes, "postgres", "redis", "sqs", "ollama", "runtime"} <= set(services)
    assert {services[name]["image"] for name in processes} == {"infra-ainode:local"}
    assert [services[name]["command"] for name in processes] == [[name] for name in processes]


def test_compose_gives_the_worker_the_engine_and_a_work_root_with_the_same_path_inside_and_out():
    worker = compose()["services"]["worker"]
    work_root = worker["environment"]["JOB_WORK_ROOT"]
    assert f"{work_root}:{work_root}" in worker["volumes"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in worker["volumes"]
    assert worker["environment"]["WORKER_HEARTBEAT_FILE"] in worker["healthcheck"]["test"][-1]


def test_compose_runs_in_production_mode_with_its_secret_from_the_environment():
    environment = compose()["services"]["web"]["environment"]
    assert environment["ENVIRONMENT"] == "production"
    assert environment["SECRET_KEY"].startswith("${SECRET_KEY:?")
    assert environment["CELERY_BROKER_URL"].startswith("sqs://")
    assert environment["DATABASE_URL"].startswith("postgres://")
