"""A job sent to the broker but not taken is sent again (jobs.outbox.resend_unclaimed): its message may be held by a
worker that died (SQS hides it for the visibility timeout; the filesystem broker loses it). The rules, on either
database, with the test's own filesystem broker; tests/jobs/test_broker_outage.py shows it through a real worker
and a real SQS server."""
from __future__ import annotations

import ast
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import Job, JobStatus
from jobs.outbox import resend_unclaimed
from tests.support.brokers import broker_messages
from tests.support.jobs import deploy, submit

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("served_models")]


@pytest.fixture
def sent_jobs(alice, settings) -> list[str]:
    """Three jobs sent at once, in direct mode (the web publishes each as it is admitted)."""
    settings.JOB_DISPATCH = "direct"
    function_id = deploy(alice, "def handler(event, context):\n    return event\n")["functionId"]
    return [submit(alice, function_id, n).json()["jobId"] for n in range(3)]


def messages_of(broker) -> list[str]:
    return [ast.literal_eval(message["headers"]["argsrepr"])[0] for message in broker_messages(broker)]


def sent_ago(job_id: str, seconds: float, *, admitted_before: float = 0.0) -> None:
    now = timezone.now()
    Job.objects.filter(pk=job_id).update(dispatched_at=now - timedelta(seconds=seconds),
                                         created_at=now - timedelta(seconds=seconds + admitted_before))


def test_a_queued_job_sent_longer_ago_than_the_bound_is_sent_again_once(sent_jobs, _isolated_broker, settings):
    settings.JOB_RESEND_AFTER_SECONDS = 60
    stale, fresh, _ = sent_jobs
    sent_ago(stale, 61)
    sent_ago(fresh, 30)
    assert resend_unclaimed() == 1
    assert sorted(messages_of(_isolated_broker)) == sorted([*sent_jobs, stale])
    # Marked sent now: the next look leaves it alone.
    assert timezone.now() - Job.objects.get(pk=stale).dispatched_at < timedelta(seconds=5)
    assert resend_unclaimed() == 0


def test_a_job_that_waited_long_before_it_was_sent_is_sent_again_only_after_as_long_again(sent_jobs, settings):
    settings.JOB_RESEND_AFTER_SECONDS = 60
    waited, _, _ = sent_jobs
    sent_ago(waited, 100, admitted_before=300)  # held 300 s (a dependency build), sent 100 s ago
    assert resend_unclaimed() == 0
    sent_ago(waited, 301, admitted_before=300)
    assert resend_unclaimed() == 1


def test_jobs_not_yet_due_never_keep_a_due_one_from_being_sent(sent_jobs, _isolated_broker, settings):
    settings.JOB_RESEND_AFTER_SECONDS = 60
    waited, due, _ = sent_jobs
    sent_ago(waited, 200, admitted_before=300)  # sent first, but not due until it has waited 300 s since
    sent_ago(due, 100)
    assert resend_unclaimed(limit=1) == 1
    assert messages_of(_isolated_broker).count(due) == 2


def test_a_job_taken_or_ended_is_never_sent_again(sent_jobs, alice, settings):
    settings.JOB_RESEND_AFTER_SECONDS = 60
    running, cancelled, _ = sent_jobs
    Job.objects.filter(pk=running).update(status=JobStatus.RUNNING, started_at=timezone.now())
    assert alice.client.post(f"/api/v1/jobs/{cancelled}/cancel/").status_code == 200
    for job_id in (running, cancelled):
        sent_ago(job_id, 600)
    assert resend_unclaimed() == 0
