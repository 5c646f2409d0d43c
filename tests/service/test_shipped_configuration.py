"""What ships carries no secret and no open door: the image's build context leaves out every SQLite file (the WAL
and shared-memory files too), compose has no default scrape token, a worker's metrics need the token off
loopback, and the image's user shares the job container's group (so a worker that is not root still gives job
folders to that group alone). gunicorn's control socket is the stack's own."""
from __future__ import annotations

import fnmatch
import urllib.error
import urllib.request

import pytest
import yaml

from core import metrics
from tests.support import REPO_ROOT
from tests.support.ports import free_port


def _ignored(path: str) -> bool:
    """Whether .dockerignore leaves `path` out of the build context (its patterns, without negations)."""
    patterns = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    return any(fnmatch.fnmatch(path, pattern.removeprefix("**/")) for pattern in patterns)


@pytest.mark.parametrize("path", ["db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm", "db.sqlite3-journal",
                                  "var/test.sqlite3", ".env"])
def test_the_build_context_leaves_out_every_database_file(path):
    assert _ignored(path)


def test_compose_has_no_default_scrape_token_and_gives_the_worker_the_job_group():
    compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    for service in ("web", "worker", "beat"):
        assert compose["services"][service]["environment"]["METRICS_TOKEN"].startswith("${METRICS_TOKEN:?")
    assert "10001" in compose["services"]["worker"]["group_add"]


def test_the_image_user_is_in_the_job_group_and_the_engine_adds_it():
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "groupadd --gid 10001" in dockerfile and "--groups 10001" in dockerfile
    assert "\nUSER 10002\n" in dockerfile  # a group given here would keep the engine from adding the others


def test_worker_metrics_refuse_to_listen_beyond_loopback_without_a_token():
    with pytest.raises(ValueError, match="METRICS_TOKEN"):
        metrics.start_worker_exporter(port=free_port(), address="0.0.0.0", token="")


def test_worker_metrics_ask_for_the_token():
    port = free_port()
    metrics.start_worker_exporter(port=port, address="127.0.0.1", token="scrape-me")
    url = f"http://127.0.0.1:{port}/metrics"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=5)
    assert refused.value.code == 403
    request = urllib.request.Request(url, headers={"Authorization": "Bearer scrape-me"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200 and b"ainode_" in answer.read()


def test_each_stack_keeps_its_own_gunicorn_control_socket(monkeypatch, tmp_path):
    monkeypatch.setenv("VAR_DIR", str(tmp_path))
    config: dict = {}
    exec((REPO_ROOT / "infra_ainode" / "gunicorn.conf.py").read_text(), config)
    assert config["control_socket"] == str(tmp_path / "gunicorn.ctl")
