"""The web API as the image serves it: gunicorn with several worker processes, whose metrics add up through
PROMETHEUS_MULTIPROC_DIR, and whose /readyz names a database that does not answer."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from tests.service.ops_helpers import parse_metrics, total
from tests.support.jobs import deploy
from tests.support.ports import free_port
from tests.support.waiting import wait_for
from tests.support.web import get, post
from tests.support.workers import database_url


def metric_samples(base: str) -> dict:
    status, body = get(base + "/metrics")
    assert status == 200, body
    return parse_metrics(body.decode())


def test_metrics_of_every_gunicorn_worker_add_up(transactional_db, alice, served_models, gunicorn, tmp_path):
    function = deploy(alice, "def handler(event, context):\n    return 1\n")
    # Sync workers (one request at a time each), so that concurrent submissions must spread over the processes: a
    # gthread worker may accept every connection itself, and which process serves is not what this test is about.
    base = gunicorn(workers=3, WEB_THREADS="1", DATABASE_URL=database_url(), METRICS_TOKEN="")
    metrics_dir = next(tmp_path.glob("prometheus-*"))
    headers = {"Authorization": f"Bearer {alice.key}", "x-async": "true"}
    body = {"functionId": function["functionId"], "modelId": "model-a"}
    sent = 0
    # Several at once, so that more than one worker takes some; a few rounds in case one worker was quick enough.
    with ThreadPoolExecutor(max_workers=8) as pool:
        while sent < 40 and len(list(metrics_dir.glob("counter_*.db"))) < 2:
            assert list(pool.map(lambda _: post(base + "/run", body, **headers), range(8))) == [202] * 8
            sent += 8
    assert len(list(metrics_dir.glob("counter_*.db"))) >= 2, "only one worker served the submissions"
    for _ in range(3):  # whichever worker answers the scrape, it reports all of them
        assert total(metric_samples(base), "ainode_jobs_submitted_total", model="model-a") == sent


def test_with_log_format_json_gunicorn_logs_json_lines_too(gunicorn, tmp_path):
    base = gunicorn(workers=1, LOG_FORMAT="json")
    assert get(base + "/healthz")[0] == 200
    log = next(tmp_path.glob("gunicorn-*.log"))

    def access_line() -> dict | None:
        entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        return next((e for e in entries if e["logger"] == "gunicorn.access" and "/healthz" in e["message"]), None)

    entry = wait_for(access_line, timeout=10, message="the access log line")
    assert entry["level"] == "INFO" and '" 200 ' in entry["message"]


def test_readyz_names_the_database_when_it_does_not_answer_while_healthz_still_answers(gunicorn):
    base = gunicorn(workers=1, DATABASE_URL=f"postgres://postgres@127.0.0.1:{free_port()}/nowhere",
                    AI_NODE_URL=f"http://127.0.0.1:{free_port()}")
    assert get(base + "/healthz")[0] == 200
    status, body = get(base + "/readyz")
    assert status == 503
    detail = json.loads(body)
    assert detail["down"] == ["ai_nodes", "database"]
    assert detail["checks"]["broker"]["ok"] is True
