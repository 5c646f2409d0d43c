"""The database under concurrent submits, and a database that is really down.

The default database is SQLite, shared by the web server's threads and the worker: 20 callers submitting at once,
while a real worker runs jobs, must all be answered. A database that is down is the one refusal the platform
cannot avoid: it answers 503 `database_unavailable`, never 500.
"""
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests
from django.db import connection
from django.test import Client

from jobs.models import Job
from tests.support.jobs import deploy
from tests.support.ports import free_port
from tests.support.waiting import wait_for

SUBMITTERS = 20
SUBMITS_EACH = 5


@pytest.mark.usefixtures("served_models")
def test_twenty_concurrent_submitters_while_jobs_run_get_no_error(alice, live_server, worker, _isolated_broker):
    worker(_isolated_broker)
    function = deploy(alice, "import time\ndef handler(event, context):\n    time.sleep(0.2)\n    return event\n")
    url = f"{live_server.url}/run"
    headers = {"Authorization": f"Bearer {alice.key}", "X-Async": "true"}
    # Jobs already running in the worker while the burst comes: its writes compete with the web server's.
    for n in range(3):
        requests.post(url, json={"functionId": function["functionId"], "inputData": n}, headers=headers,
                      timeout=30).raise_for_status()
    wait_for(lambda: Job.objects.filter(status="running").exists(), timeout=60, message="a job to run")
    statuses: Counter[int] = Counter()
    lock, start = threading.Lock(), threading.Barrier(SUBMITTERS)

    def submitter(index: int) -> None:
        session = requests.Session()
        start.wait()
        for n in range(SUBMITS_EACH):
            response = session.post(url, json={"functionId": function["functionId"], "inputData": [index, n]},
                                    headers=headers, timeout=60)
            with lock:
                statuses[response.status_code] += 1

    threads = [threading.Thread(target=submitter, args=(i,)) for i in range(SUBMITTERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert statuses == {202: SUBMITTERS * SUBMITS_EACH}
    assert Job.objects.count() == 3 + SUBMITTERS * SUBMITS_EACH


@contextmanager
def database_down() -> Iterator[None]:
    """The test database's connection pointed where no database is (a folder that does not exist, a port nothing
    listens on); restored afterwards."""
    conf = connection.settings_dict
    saved = dict(conf)
    connection.close()
    if conf["ENGINE"].endswith("sqlite3"):
        conf["NAME"] = "/nonexistent-folder/down.sqlite3"
    else:
        conf["HOST"], conf["PORT"] = "127.0.0.1", str(free_port())
    try:
        yield
    finally:
        connection.close()
        conf.clear()
        conf.update(saved)


def test_an_api_call_while_the_database_is_down_answers_503(alice, transactional_db):
    with database_down():
        response = alice.client.get("/api/v1/functions/")
    assert response.status_code == 503, response.content
    assert response.json()["code"] == "database_unavailable"
    assert response["Retry-After"]


def test_a_page_outside_the_api_while_the_database_is_down_answers_503(operator, transactional_db):
    client = Client(raise_request_exception=False)
    client.force_login(operator.user)  # its session is in the database, read on the next request
    with database_down():
        response = client.get("/admin/")
    assert response.status_code == 503, response.content
    assert response.json()["code"] == "database_unavailable"
