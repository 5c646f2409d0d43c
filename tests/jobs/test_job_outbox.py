"""JOB_DISPATCH=outbox, the default on PostgreSQL: an admission writes its job and a NOTIFY, and the relay in every
worker sends the job to the broker (jobs/outbox.py). PostgreSQL only: the relays are woken by LISTEN/NOTIFY. The
broker is the test's own filesystem folder; the last tests run jobs through a real worker."""
from __future__ import annotations

import ast
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.utils import timezone

from jobs.models import Job
from jobs.outbox import BATCH, dispatch_waiting
from jobs.relay_bell import OUTBOX_CHANNEL
from tests.support.brokers import broker_messages, filesystem_broker
from tests.support.databases import postgresql_only
from tests.support.jobs import deploy, submit
from tests.support.waiting import wait_for_status

pytestmark = [
    postgresql_only("the outbox needs PostgreSQL (LISTEN/NOTIFY)"),
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("served_models"),
]

HANDLER = "def handler(event, context):\n    return event\n"


@pytest.fixture
def function_id(alice) -> str:
    return deploy(alice, HANDLER, name="echo")["functionId"]


def sent_job_ids(broker) -> list[str]:
    """The job ids of the task messages in the test's filesystem broker folder."""
    return [ast.literal_eval(message["headers"]["argsrepr"])[0] for message in broker_messages(broker)]


@contextmanager
def listening() -> Iterator:
    """A connection of its own that LISTENs where the relays do."""
    listener = connections.create_connection(DEFAULT_DB_ALIAS)
    listener.ensure_connection()
    try:
        listener.connection.execute(f"LISTEN {OUTBOX_CHANNEL}")
        yield listener.connection
    finally:
        listener.close()


def test_an_admission_publishes_nothing_and_wakes_the_relays(alice, function_id, _isolated_broker):
    with listening() as listener:
        response = submit(alice, function_id, {"x": 1})
        assert response.status_code == 202, response.content
        notifications = list(listener.notifies(timeout=5, stop_after=1))
    assert [notification.channel for notification in notifications] == [OUTBOX_CHANNEL]
    assert sent_job_ids(_isolated_broker) == []
    job = Job.objects.get(pk=response.json()["jobId"])
    assert (job.status, job.dispatched_at) == ("queued", None)


def test_a_rolled_back_admission_wakes_no_relay(alice, function_id):
    from jobs.dispatch import hand_over

    with listening() as listener:
        with pytest.raises(RuntimeError), transaction.atomic():
            hand_over(Job())
            raise RuntimeError("the admission failed after its NOTIFY")
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []


def test_the_relay_sends_the_waiting_jobs_oldest_first_and_marks_them_sent(alice, function_id,
                                                                            _isolated_broker):
    job_ids = [submit(alice, function_id, n).json()["jobId"] for n in range(BATCH + 2)]

    assert dispatch_waiting(limit=1) == 1
    assert sent_job_ids(_isolated_broker) == [job_ids[0]]
    assert dispatch_waiting() == BATCH
    assert dispatch_waiting() == 1
    assert dispatch_waiting() == 0
    assert sorted(sent_job_ids(_isolated_broker)) == sorted(job_ids)
    assert not Job.objects.filter(pk__in=job_ids, dispatched_at__isnull=True).exists()


def test_a_cancelled_job_is_never_sent(alice, function_id, _isolated_broker):
    job_id = submit(alice, function_id).json()["jobId"]
    assert alice.client.post(f"/api/v1/jobs/{job_id}/cancel/").status_code == 200
    assert dispatch_waiting() == 0
    assert sent_job_ids(_isolated_broker) == []


def test_a_job_the_broker_refuses_waits_and_fails_with_queue_unavailable_after_the_timeout(
        alice, function_id, use_broker, tmp_path, settings):
    old, new = (submit(alice, function_id, n).json()["jobId"] for n in range(2))
    Job.objects.filter(pk=old).update(created_at=timezone.now() - timedelta(seconds=settings.JOB_DISPATCH_TIMEOUT + 1))
    working = filesystem_broker(tmp_path / "working")
    refusing = filesystem_broker(tmp_path / "refusing")
    (tmp_path / "a-file").write_text("")
    refusing.transport_options["data_folder_out"] = str(tmp_path / "a-file" / "out")  # no folder can be made there
    use_broker(refusing)

    with pytest.raises(Exception, match="a-file"):
        dispatch_waiting()
    failed = Job.objects.get(pk=old)
    assert (failed.status, failed.error_code) == ("failed", "queue_unavailable")
    assert "unavailable" in failed.error_message
    assert alice.client.get(f"/status/{old}").json()["errorCode"] == "queue_unavailable"
    assert Job.objects.get(pk=new).status == "queued"

    use_broker(working)
    assert dispatch_waiting() == 1
    assert sent_job_ids(working) == [new]


def test_a_job_admitted_in_direct_mode_is_never_sent_by_a_relay(alice, function_id, _isolated_broker, settings):
    settings.JOB_DISPATCH = "direct"
    job_id = submit(alice, function_id).json()["jobId"]  # published by the web process as its row committed
    assert dispatch_waiting() == 0
    assert sent_job_ids(_isolated_broker) == [job_id]


def test_two_relays_never_send_the_same_job(alice, function_id, _isolated_broker):
    job_id = submit(alice, function_id).json()["jobId"]
    other_relay: list[int] = []

    def relay() -> None:
        try:
            other_relay.append(dispatch_waiting())
        finally:
            connection.close()

    with transaction.atomic():
        assert dispatch_waiting() == 1  # this relay holds the job's row until it commits
        thread = threading.Thread(target=relay)
        thread.start()
        thread.join(timeout=30)
    assert other_relay == [0]
    assert sent_job_ids(_isolated_broker) == [job_id]


# --- through a real worker ----------------------------------------------------------------------------------------

def test_a_job_admitted_while_no_worker_ran_is_run_when_one_starts(alice, function_id, worker,
                                                                     _isolated_broker):
    job_id = submit(alice, function_id, {"n": 7}).json()["jobId"]
    # The worker's own JOB_DISPATCH does not matter: every worker on PostgreSQL relays what the web admitted.
    worker(_isolated_broker, JOB_DISPATCH="direct")
    body = wait_for_status(alice, job_id)
    assert (body["status"], body["result"]) == ("succeeded", {"n": 7}), body
    job = Job.objects.get(pk=job_id)
    assert job.dispatched_at is not None and job.deliveries == 1


def test_a_synchronous_run_is_woken_by_its_notify(alice, function_id, worker, _isolated_broker, settings):
    # The relay looks by itself only once an hour: only the admission's NOTIFY can have sent the job.
    worker(_isolated_broker, JOB_DISPATCH_POLL_SECONDS=3600)
    settings.RUN_SYNC_TIMEOUT = 60
    response = submit(alice, function_id, {"n": 42}, asynchronous=False)
    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["result"]) == ("succeeded", {"n": 42})
