"""The usage export: each model call and each job's total as a CloudEvent with a stable id, to a real receiver on
127.0.0.1, each user's in order; and the backfill of a range of days."""
import pytest
from django.core.management import call_command
from django.utils import timezone

from jobs.endings import end_job
from jobs.metering.ledger import record_call
from jobs.models import Job
from nodeclient import Usage
from outbound import services
from outbound.delivery import deliver
from outbound.models import Event, EventStatus
from outbound.signing import new_secret, verify
from tests.support.jobs import make_job

# record_call closes a connection left in a transaction, so these tests commit their rows.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("served_models")]

CODE = "def handler(event, context):\n    return 1\n"


@pytest.fixture
def export_to(receiver, settings):
    def start(**kwargs):
        hook = receiver(**kwargs)
        settings.USAGE_EXPORT_URL = hook.url
        settings.USAGE_EXPORT_SECRET = new_secret()
        return hook

    return start


def _call(job, prompt=10, completion=5):
    return record_call(job_id=str(job.pk), model_id=job.model_id, node="test-node", endpoint="/v1/chat/completions",
                       streamed=False, usage=Usage(prompt_tokens=prompt, completion_tokens=completion),
                       max_tokens=None, done_reason="stop", duration_ms=3, node_duration_ms=None)


def _finish(job):
    """The job runs and succeeds, as its worker would move it."""
    assert Job.objects.move(job.pk, "running") and end_job(job.pk, "succeeded", finished_at=timezone.now())


def _deliver_all():
    for pk in Event.objects.filter(status=EventStatus.PENDING).order_by("pk").values_list("pk", flat=True):
        deliver(pk)


def test_each_call_and_each_job_total_is_exported_as_a_signed_cloud_event(alice, export_to, settings):
    hook = export_to()
    job = make_job(alice, CODE)
    first, second = _call(job), _call(job, prompt=7, completion=3)
    _finish(job)
    _deliver_all()
    assert [r.json["id"] for r in hook.received] == [f"llmcall-{first.pk}", f"llmcall-{second.pk}", f"job-{job.pk}"]
    call = hook.received[0]
    assert call.headers["content-type"] == "application/cloudevents+json"
    assert verify(settings.USAGE_EXPORT_SECRET, headers=call.headers, body=call.body)
    assert {k: call.json[k] for k in ("specversion", "type", "subject")} == {
        "specversion": "1.0", "type": "com.infra-ainode.llm.call", "subject": str(alice.id)}
    assert (call.json["data"]["promptTokens"], call.json["data"]["completionTokens"]) == (10, 5)
    total = hook.received[2].json
    assert (total["type"], total["data"]["promptTokens"], total["data"]["llmCalls"]) == (
        "com.infra-ainode.job.usage", 17, 2)


def test_a_users_events_are_delivered_in_order_and_a_failure_holds_the_ones_after_it(alice, bob, export_to):
    hook = export_to(script=[(500, 0)])
    a1, a2 = _call(make_job(alice, CODE)), _call(make_job(alice, CODE))
    b1 = _call(make_job(bob, CODE))
    first, after, bobs = (Event.objects.get(event_id=f"llmcall-{c.pk}") for c in (a1, a2, b1))
    assert deliver(after.pk) == ""  # alice's first is still pending: her second waits
    assert deliver(first.pk) == "retrying"
    assert deliver(after.pk) == ""
    assert deliver(bobs.pk) == "delivered"  # bob's stream is his own
    Event.objects.filter(pk=first.pk).update(next_attempt_at=timezone.now())
    assert [deliver(first.pk), deliver(after.pk)] == ["delivered", "delivered"]
    assert hook.ids() == [first.event_id, bobs.event_id, first.event_id, after.event_id]


def test_nothing_is_exported_while_the_export_is_off(alice):
    _call(make_job(alice, CODE))
    assert Event.objects.count() == 0


def test_the_backfill_exports_a_range_once_and_again_on_request(alice, export_to, settings):
    job = make_job(alice, CODE)
    calls = [_call(job), _call(job)]
    end_job(job.pk, "failed", finished_at=timezone.now())
    assert Event.objects.count() == 0  # recorded while the export was off
    hook = export_to()
    today = timezone.localdate().isoformat()
    call_command("export_usage", "--from", today, "--to", today)
    call_command("export_usage", "--from", today, "--to", today)
    assert sorted(Event.objects.values_list("event_id", flat=True)) == sorted(
        [f"llmcall-{c.pk}" for c in calls] + [f"job-{job.pk}"])
    _deliver_all()
    assert len(hook.received) == 3
    call_command("export_usage", "--from", today, "--to", today, "--again")
    _deliver_all()
    assert hook.ids()[3:] == hook.ids()[:3]


def test_webhooks_and_the_export_share_the_outbox_but_not_their_order(alice, export_to, receiver):
    hook = export_to()
    services.create_endpoint(owner=alice.user, url=receiver().url, event_types=["job.succeeded"])
    job = make_job(alice, CODE)
    _finish(job)
    kinds = sorted(Event.objects.values_list("destination", "stream"))
    assert kinds == [("export", f"export:{alice.id}"), ("webhook", "")]
    _deliver_all()
    assert hook.ids() == [f"job-{job.pk}"]
