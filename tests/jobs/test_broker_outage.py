"""A worker survives an SQS outage: with its SQS server killed and started again, the worker's consumer picks up
the next job on its own, without a restart, within seconds of the server answering again. Its liveness file says
whether it is consuming. A message that a consumer took and died with comes back long before SQS's visibility
timeout would return it.

The SQS server is a moto_server of the test's own, killed for real (SIGKILL) and started again on the same port.
A restarted moto has lost its queues (real SQS never does), so the test makes the job queue again, as the
operator's SQS would still have it."""
from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from jobs.models import Job
from jobs.outbox import dispatch_waiting
from tests.support.brokers import MOTO_HOST, MOTO_SERVER, moto_answers, sqs_broker
from tests.support.databases import postgresql_only
from tests.support.jobs import deploy, submit
from tests.support.ports import free_port
from tests.support.waiting import wait_for, wait_for_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("served_models")]

ECHO = "def handler(event, context):\n    return event\n"


class MotoServer:
    def __init__(self, port: int, log: Path) -> None:
        self.port, self.log, self.process = port, log, None

    def start(self) -> "MotoServer":
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen([str(MOTO_SERVER), "-H", MOTO_HOST, "-p", str(self.port)], stdout=out,
                                            stderr=subprocess.STDOUT)
        wait_for(lambda: moto_answers(MOTO_HOST, self.port), timeout=30, message="moto_server to answer")
        return self

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoServer]:
    server = MotoServer(free_port(), tmp_path / "moto.log").start()
    yield server
    if server.process.poll() is None:
        server.kill()


def test_a_worker_consumes_again_on_its_own_after_the_sqs_server_comes_back(worker, alice, use_broker, short_tmp,
                                                                             moto, settings):
    broker = use_broker(sqs_broker(short_tmp / "var", (MOTO_HOST, moto.port), visibility_timeout=30))
    worker(broker)
    function = deploy(alice, ECHO)
    first = submit(alice, function["functionId"], {"n": 1}).json()["jobId"]
    assert wait_for_status(alice, first, timeout=60)["status"] == "succeeded"
    queue_name = broker.transport_options["queue_name_prefix"] + settings.JOB_QUEUE

    moto.kill()
    time.sleep(8)  # the consumer's polls fail meanwhile
    moto.start()
    boto3.client("sqs", endpoint_url=f"http://{MOTO_HOST}:{moto.port}", region_name="us-east-1",
                 aws_access_key_id="x", aws_secret_access_key="x").create_queue(QueueName=queue_name)
    back_at = time.monotonic()
    second = submit(alice, function["functionId"], {"n": 2}).json()["jobId"]
    body = wait_for_status(alice, second, timeout=60)
    assert body["status"] == "succeeded", body
    assert time.monotonic() - back_at < 20


def test_a_worker_whose_sqs_polling_stopped_for_good_lets_its_liveness_file_go_stale(worker, use_broker, short_tmp,
                                                                                     moto, tmp_path):
    """The process and its timer live on, but it takes no message: an orchestrator must see it as dead. The
    watchdog polls such a queue again (one poll each time), which does not count as the loop moving on."""
    broker = use_broker(sqs_broker(short_tmp / "var", (MOTO_HOST, moto.port)))
    heartbeat = tmp_path / "alive"
    worker(broker, app="tests.support.wedged_sqs_worker", WORKER_HEARTBEAT_FILE=str(heartbeat),
           WORKER_HEARTBEAT_SECONDS="1")
    wait_for(heartbeat.exists, timeout=10, message="the liveness file")
    # Stale within a long poll (1 s here), the watchdog's look and two margins, with a heartbeat's slack.
    wait_for(lambda: time.time() - heartbeat.stat().st_mtime > 5, timeout=40, interval=1,
             message="the liveness file to go stale")


def test_a_worker_keeps_its_liveness_file_fresh_through_an_sqs_outage(worker, use_broker, short_tmp, moto, tmp_path):
    """Its polls fail and are tried again: the worker is trying, and restarting it would not bring the server
    back. (A worker that is restarted meanwhile loses nothing either: SQS keeps the messages.)"""
    broker = use_broker(sqs_broker(short_tmp / "var", (MOTO_HOST, moto.port)))
    heartbeat = tmp_path / "alive"
    worker(broker, WORKER_HEARTBEAT_FILE=str(heartbeat), WORKER_HEARTBEAT_SECONDS="1")
    wait_for(heartbeat.exists, timeout=10, message="the liveness file")
    moto.kill()
    for _ in range(35):
        time.sleep(1)
        assert time.time() - heartbeat.stat().st_mtime < 5


@postgresql_only("the relays, which send again, run on PostgreSQL (beat does it on SQLite)")
def test_a_job_whose_message_a_dead_consumer_holds_is_sent_again_long_before_the_visibility_timeout(
        worker, alice, use_broker, short_tmp, moto, settings):
    broker = use_broker(sqs_broker(short_tmp / "var", (MOTO_HOST, moto.port), visibility_timeout=600))
    function = deploy(alice, ECHO)
    job_id = submit(alice, function["functionId"], {"n": 1}).json()["jobId"]
    assert dispatch_waiting() == 1  # what a relay does: the message is in the queue
    # A consumer takes the message and dies before it could claim the job: SQS hides the message for 600 s.
    sqs = boto3.client("sqs", endpoint_url=f"http://{MOTO_HOST}:{moto.port}", region_name="us-east-1",
                       aws_access_key_id="x", aws_secret_access_key="x")
    queue_url = sqs.get_queue_url(QueueName=broker.transport_options["queue_name_prefix"] + settings.JOB_QUEUE)
    taken = sqs.receive_message(QueueUrl=queue_url["QueueUrl"], VisibilityTimeout=600, WaitTimeSeconds=5)
    assert len(taken.get("Messages", [])) == 1

    started = time.monotonic()
    worker(broker, JOB_RESEND_AFTER_SECONDS="5")
    body = wait_for_status(alice, job_id, timeout=60)
    assert (body["status"], body["result"]) == ("succeeded", {"n": 1}), body
    assert time.monotonic() - started < 30
    assert Job.objects.get(pk=job_id).deliveries == 1
