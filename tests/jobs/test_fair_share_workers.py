"""Fair share through real parts: two worker processes on SQS (moto_server), their relays, and the real model node
limited to one call at once. PostgreSQL only (the relays)."""
from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connections

from jobs.events.store import event_store
from jobs.models import CallTicket, Job
from tests.fixtures.ai_node import ai_node  # noqa: F401  (the session fixture)
from tests.support.brokers import sqs_broker
from tests.support.databases import postgresql_only
from tests.support.jobs import deploy, submit
from tests.support.waiting import wait_for_status

pytestmark = [
    postgresql_only("fair share's relays need PostgreSQL (LISTEN/NOTIFY, advisory locks)"),
    pytest.mark.django_db(transaction=True),
]

THREE_CALLS = ("import ai_client\n"
               "def handler(event, context):\n"
               "    for _ in range(3):\n"
               "        ai_client.generate('Say hello.', max_tokens=8, temperature=0, seed=1)\n"
               "    return event\n")
SLEEPS = "import time\ndef handler(event, context):\n    time.sleep(1.5)\n    return event\n"


@pytest.fixture
def one_call_at_a_time(settings, request: pytest.FixtureRequest) -> None:
    """The real model node as the catalogue's only node, serving one call at once across all workers."""
    from models_catalog.services import sync_catalogue

    node = request.getfixturevalue("ai_node")
    settings.AI_NODES = json.dumps([{"name": "limited", "kind": "openai", "url": node.openai_url,
                                     "queue": settings.JOB_QUEUE, "max_concurrent_calls": 1}])
    sync_catalogue(timeout_ms=10_000)


@pytest.fixture
def two_workers(worker, short_tmp: Path, use_broker, request: pytest.FixtureRequest) -> None:
    broker = use_broker(sqs_broker(short_tmp / "var", request.getfixturevalue("moto_endpoint")))
    worker(broker)
    worker(broker)


class GrantedPeak:
    """Samples, from a thread of its own, how many of the node's call slots are held."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> GrantedPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.01):
                self.peak = max(self.peak, CallTicket.objects.filter(node="limited", granted_at__isnull=False).count())
        finally:
            connections.close_all()


def events_of(job_id: str, kind: str) -> list[dict]:
    return [event.data for event in event_store().read(job_id, after=None, wait=0) if event.kind == kind]


def test_a_nodes_call_limit_holds_across_two_workers(alice, bob, one_call_at_a_time, two_workers):
    functions = {account.user.pk: deploy(account, THREE_CALLS)["functionId"] for account in (alice, bob)}
    with GrantedPeak() as slots:
        job_ids = [submit(account, functions[account.user.pk], i).json()["jobId"]
                   for i in range(2) for account in (alice, bob)]
        bodies = [wait_for_status(account, job_id, timeout=120)
                  for account, job_id in zip([alice, bob] * 2, job_ids)]
    assert [body["status"] for body in bodies] == ["succeeded"] * 4, bodies
    assert slots.peak == 1, "the node's one slot was used, and never twice at once"
    assert len({body["workerId"] for body in bodies}) == 2, "both workers ran jobs"
    starts = [event for job_id in job_ids for event in events_of(job_id, "llm_call") if event["phase"] == "start"]
    assert len(starts) == 12 and all("slotWaitMs" in event for event in starts)
    assert any(event["slotWaitMs"] > 0 for event in starts), "calls of the two workers waited for each other"
    assert not CallTicket.objects.exists()
    assert all(events_of(job_id, "queue")[0]["phase"] == "sent" for job_id in job_ids)


def test_a_lone_user_runs_on_every_worker_at_once(alice, one_call_at_a_time, two_workers):
    function_id = deploy(alice, SLEEPS)["functionId"]
    job_ids = [submit(alice, function_id, i).json()["jobId"] for i in range(4)]
    for job_id in job_ids:
        assert wait_for_status(alice, job_id, timeout=120)["status"] == "succeeded"
    jobs = list(Job.objects.filter(pk__in=job_ids).order_by("started_at"))
    sent = [job.dispatched_at for job in sorted(jobs, key=lambda job: job.created_at)]
    assert sent == sorted(sent), "sent in the order they were submitted"
    overlapping = [(a, b) for a in jobs for b in jobs
                   if a.worker_id != b.worker_id and a.started_at < b.finished_at - timedelta(seconds=0.5)
                   and b.started_at < a.finished_at - timedelta(seconds=0.5)]
    assert overlapping, "the two workers ran alice's jobs at the same time"
