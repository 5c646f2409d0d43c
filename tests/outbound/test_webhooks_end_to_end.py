"""Webhooks of real jobs, end to end: a job worker runs the jobs in Docker, a worker of the outbound queue delivers
their ends to a real receiver on 127.0.0.1 that fails, answers slowly, and then accepts."""
import time

import pytest

from jobs.models import Job
from outbound.delivery import sweep
from outbound.models import Event, EventStatus
from outbound.signing import verify
from tests.fixtures.receivers import LOOPBACK
from tests.support.jobs import deploy, submit
from tests.support.waiting import wait_for, wait_for_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("served_models")]

OK = "def handler(event, context):\n    return {'n': event['n']}\n"
FAILS = "def handler(event, context):\n    raise ValueError('no')\n"
# The outbound worker: loopback allowed, short timeouts and quick retries.
OUTBOUND_ENV = {"WORKER_QUEUES": "outbound", "OUTBOUND_ALLOWED_NETWORKS": LOOPBACK, "OUTBOUND_TIMEOUT_SECONDS": "1",
                "OUTBOUND_RETRY_SECONDS": "0.5,0.5,0.5,0.5"}


def _register(account, url):
    response = account.client.post("/api/v1/webhooks/", {"url": url, "eventTypes": ["job.succeeded", "job.failed"]},
                                   format="json")
    assert response.status_code == 201, response.content
    return response.json()["secret"]


def _delivered(count):
    return lambda: Event.objects.filter(status=EventStatus.DELIVERED).count() == count


def test_every_job_end_arrives_signed_through_failures_and_slow_answers(_isolated_broker, worker, alice, receiver):
    hook = receiver(script=[(500, 0), (200, 3.0), (503, 0)])  # refused, too slow, refused; then accepted
    secret = _register(alice, hook.url)
    worker(_isolated_broker)
    worker(_isolated_broker, **OUTBOUND_ENV)
    ok, bad = deploy(alice, OK), deploy(alice, FAILS)
    jobs = [submit(alice, ok["functionId"], {"n": n}).json()["jobId"] for n in range(3)]
    jobs.append(submit(alice, bad["functionId"], {}).json()["jobId"])
    for job_id in jobs:
        wait_for_status(alice, job_id)

    wait_for(_delivered(4), timeout=60, message="four deliveries")
    assert all(verify(secret, headers=r.headers, body=r.body) for r in hook.received)
    accepted = {r.json["data"]["jobId"]: r.json["type"] for r in hook.received[3:]}
    assert accepted == {**{j: "job.succeeded" for j in jobs[:3]}, jobs[3]: "job.failed"}
    # The refused and slow attempts were of events delivered later under the same id.
    assert len(set(hook.ids())) == 4 and len(hook.received) == 7
    assert Event.objects.filter(attempts__gt=1).count() >= 1
    assert set(Job.objects.values_list("status", flat=True)) == {"succeeded", "failed"}


def test_nothing_is_lost_when_the_delivering_worker_is_killed(_isolated_broker, worker, alice, receiver):
    hook = receiver(script=[(200, 30.0)])  # the first attempt hangs
    secret = _register(alice, hook.url)
    worker(_isolated_broker)
    doomed = worker(_isolated_broker, **{**OUTBOUND_ENV, "OUTBOUND_TIMEOUT_SECONDS": "2"})
    job_id = submit(alice, deploy(alice, OK)["functionId"], {"n": 1}).json()["jobId"]
    wait_for(lambda: hook.received, timeout=60, message="the first attempt")
    doomed.kill()  # mid-delivery: the receiver has the request, the worker never learns its answer
    worker(_isolated_broker, **OUTBOUND_ENV)

    def delivered() -> bool:
        sweep()  # what beat does every OUTBOUND_SWEEP_SECONDS: the row is sent again once its lease ends
        return _delivered(1)()

    wait_for(delivered, timeout=30, interval=0.5, message="the delivery after the kill")
    assert hook.ids() == [hook.ids()[0]] * 2
    assert hook.received[-1].json["data"]["jobId"] == job_id
    assert verify(secret, headers=hook.received[-1].headers, body=hook.received[-1].body)


def test_a_dead_letter_is_delivered_when_redelivered_by_hand(_isolated_broker, worker, alice, receiver):
    hook = receiver(script=[(500, 0)] * 5)  # every attempt of the first round fails
    _register(alice, hook.url)
    worker(_isolated_broker)
    worker(_isolated_broker, **OUTBOUND_ENV)
    submit(alice, deploy(alice, OK)["functionId"], {"n": 2})
    wait_for(lambda: Event.objects.filter(status=EventStatus.DEAD).exists(), timeout=60, message="a dead letter")
    event = Event.objects.get()
    assert event.attempts == 5 and event.delivery_attempts.count() == 5
    time.sleep(1)
    assert len(hook.received) == 5  # no attempt after the last

    response = alice.client.post(f"/api/v1/deliveries/{event.pk}/redeliver")
    assert response.status_code == 200, response.content
    wait_for(_delivered(1), timeout=30, message="the redelivery")
    assert hook.ids() == [event.event_id] * 6
