"""PostgreSQL crashes under load and comes back: the web, the worker and its outbox relay carry on by themselves.

The database is a server of the test's own (tests/support/private_postgres.py), killed with SIGKILL (as a power cut
would) while jobs are being submitted, and started again 5 s later. While it is down, a submit is answered 503
`database_unavailable`; once it is back, submits are taken again within seconds without a restart of anything,
and every job that was admitted runs exactly once (each makes one call to the real model: one ledger row each) and
ends `succeeded`: none is lost, run twice or left running."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support import REPO_ROOT
from tests.support.private_postgres import PrivatePostgres
from tests.support.waiting import wait_for

ONE_CALL = ("import ai_client\n"
            "def handler(event, context):\n"
            "    ai_client.generate('Say yes.', max_tokens=2, temperature=0, seed=1)\n"
            "    return event\n")
DOWN_SECONDS = 5.0


@pytest.fixture
def database() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres().start()
    yield server
    server.remove()


def manage(url: str, *args: str) -> str:
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "infra_ainode.settings"}
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def request(base: str, method: str, path: str, key: str, body: dict | None = None,
            **headers: str) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                                          **headers})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_a_postgresql_crash_under_load_costs_time_not_jobs(database, ai_node, gunicorn, worker, _isolated_broker):
    manage(database.url, "migrate", "--noinput", "-v0")
    key = manage(database.url, "create_api_key", "alice").strip().splitlines()[-1]
    manage(database.url, "shell", "-c",
           "from models_catalog.models import AINode, ModelCatalog\n"
           f"node = AINode.objects.create(name='node', kind='openai', url='{ai_node.openai_url}', queue='jobs')\n"
           f"ModelCatalog.objects.create(node=node, model_id='{ai_node.model_id}', name='{ai_node.model_id}')\n")
    base = gunicorn(workers=2, DATABASE_URL=database.url)
    worker(_isolated_broker, DATABASE_URL=database.url)
    status, function = request(base, "POST", "/api/v1/functions/", key, {"name": "one-call", "code": ONE_CALL})
    assert status == 201, function

    answers: list[tuple[float, int, dict]] = []
    stop = threading.Event()

    def submitter() -> None:
        n = 0
        while not stop.is_set():
            status, body = request(base, "POST", "/run", key, {"functionId": function["functionId"],
                                                                "modelId": ai_node.model_id, "inputData": n},
                                   **{"X-Async": "true"})
            answers.append((time.monotonic(), status, body))
            n += 1
            time.sleep(0.2)

    thread = threading.Thread(target=submitter)
    thread.start()
    try:
        time.sleep(4)
        database.crash()
        time.sleep(DOWN_SECONDS)
        database.start()
        back_at = time.monotonic()
        wait_for(lambda: any(at > back_at and status == 202 for at, status, _ in answers), timeout=30,
                 message="a submit to be taken again")
        time.sleep(3)
    finally:
        stop.set()
        thread.join(60)

    refused = [body for _, status, body in answers if status != 202]
    assert refused, "no submit met the database down"
    assert all(body and body.get("code") == "database_unavailable" for body in refused), refused
    first_again = min(at for at, status, _ in answers if at > back_at and status == 202)
    assert first_again - back_at < 10
    admitted = [body["jobId"] for _, status, body in answers if status == 202]
    assert len(admitted) >= 10

    ids = ", ".join(f"'{job_id}'" for job_id in admitted)

    def all_ended() -> bool:
        ended = database.rows(f"SELECT count(*) FROM jobs_job WHERE id IN ({ids}) "
                                   "AND status IN ('succeeded', 'failed', 'timed_out', 'cancelled')")
        return ended[0][0] == len(admitted)

    wait_for(all_ended, timeout=180, interval=1, message="every admitted job to end")
    statuses = database.rows(f"SELECT status, error_code, count(*) FROM jobs_job WHERE id IN ({ids}) "
                                  "GROUP BY status, error_code")
    assert statuses == [("succeeded", "", len(admitted))], statuses
    calls = database.rows(f"SELECT job_id, count(*) FROM jobs_llmcall WHERE job_id IN ({ids}) GROUP BY job_id")
    assert len(calls) == len(admitted) and {count for _, count in calls} == {1}, calls
