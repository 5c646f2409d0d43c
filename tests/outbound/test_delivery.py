"""The outbox's delivery, attempt by attempt, in this process against a real receiver on 127.0.0.1: signatures,
ids that repeat on retries, the delivery log, backoff, dead letters and redelivery."""
from datetime import timedelta

import pytest
from django.utils import timezone

from outbound import services
from outbound.delivery import deliver, prune, sweep
from outbound.models import DeliveryAttempt, Event, EventStatus
from outbound.signing import verify
from tests.support import REPO_ROOT

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def quick_retries(settings):
    settings.OUTBOUND_RETRY_SECONDS = [0.0, 0.0]  # three attempts, each due at once
    settings.OUTBOUND_TIMEOUT_SECONDS = 1.0


def _endpoint(account, url, types=("job.succeeded",)):
    return services.create_endpoint(owner=account.user, url=url, event_types=list(types))


def _event(account, event_type="job.succeeded"):
    [event] = services.record(owner_id=account.id, event_type=event_type, data=lambda: {"jobId": "j1"})
    return event


def test_a_delivery_is_signed_and_verifies_with_the_endpoints_secret(alice, receiver):
    hook = receiver()
    endpoint = _endpoint(alice, hook.url)
    event = _event(alice)
    assert deliver(event.pk) == "delivered"
    [got] = hook.received
    assert verify(endpoint.secret, headers=got.headers, body=got.body)
    assert not verify(services.create_endpoint(owner=alice.user, url=hook.url, event_types=["job.failed"]).secret,
                      headers=got.headers, body=got.body)
    assert got.json["type"] == "job.succeeded" and got.json["data"] == {"jobId": "j1"}
    assert got.headers["webhook-id"] == got.json["id"] == event.event_id
    event.refresh_from_db()
    assert (event.status, event.attempts, event.last_status_code) == (EventStatus.DELIVERED, 1, 200)


def test_failed_attempts_are_retried_with_the_same_id_and_logged(alice, receiver):
    hook = receiver(script=[(500, 0), (503, 0)])
    _endpoint(alice, hook.url)
    event = _event(alice)
    assert [deliver(event.pk) for _ in range(3)] == ["retrying", "retrying", "delivered"]
    assert hook.ids() == [event.event_id] * 3
    log = list(DeliveryAttempt.objects.filter(event=event).values_list("status_code", "succeeded", "error"))
    assert log == [(500, False, "http_500"), (503, False, "http_503"), (200, True, "")]
    assert DeliveryAttempt.objects.filter(event=event).first().response_body == "not now"


def test_a_slow_answer_is_a_failed_attempt(alice, receiver):
    hook = receiver(script=[(200, 3.0)])
    _endpoint(alice, hook.url)
    event = _event(alice)
    assert deliver(event.pk) == "retrying"
    attempt = DeliveryAttempt.objects.get(event=event)
    assert attempt.error.startswith("timeout") and attempt.duration_ms < 2500


def test_the_last_failed_attempt_makes_a_dead_letter_and_redelivery_sends_it_again(alice, receiver):
    hook = receiver(script=[(500, 0)] * 3)
    _endpoint(alice, hook.url)
    event = _event(alice)
    assert [deliver(event.pk) for _ in range(3)] == ["retrying", "retrying", "dead"]
    assert deliver(event.pk) == ""  # dead: no more attempts
    services.redeliver(event=event)
    assert deliver(event.pk) == "delivered"
    assert hook.ids() == [event.event_id] * 4
    event.refresh_from_db()
    assert event.status == EventStatus.DELIVERED


def test_an_attempt_is_made_once_however_many_messages_ask_for_it(alice, receiver):
    hook = receiver()
    _endpoint(alice, hook.url)
    event = _event(alice)
    assert [deliver(event.pk), deliver(event.pk)] == ["delivered", ""]
    assert len(hook.received) == 1


def test_a_webhook_to_a_private_address_is_refused_and_never_sent(alice, receiver, settings):
    hook = receiver()
    _endpoint(alice, hook.url)
    settings.OUTBOUND_ALLOWED_NETWORKS = []  # the operator took loopback back
    event = _event(alice)
    assert deliver(event.pk) == "retrying"
    assert DeliveryAttempt.objects.get(event=event).error.startswith("destination_not_allowed")
    assert hook.received == []


def test_endpoints_get_only_the_events_they_subscribed_to(alice, bob, receiver):
    hook = receiver()
    _endpoint(alice, hook.url, types=["job.failed"])
    _endpoint(bob, hook.url, types=["job.succeeded"])
    assert services.record(owner_id=alice.id, event_type="job.succeeded", data=dict) == []
    assert Event.objects.count() == 0


def test_after_a_rotation_both_secrets_sign_until_the_overlap_ends(alice, receiver, settings):
    hook = receiver()
    endpoint = _endpoint(alice, hook.url)
    old = endpoint.secret
    services.rotate_secret(endpoint)
    deliver(_event(alice).pk)
    settings.WEBHOOK_SECRET_OVERLAP_SECONDS = 0
    services.rotate_secret(endpoint)
    deliver(_event(alice).pk)
    first, second = hook.received
    assert verify(old, headers=first.headers, body=first.body)
    assert len(first.headers["webhook-signature"].split()) == 2
    assert len(second.headers["webhook-signature"].split()) == 1
    assert verify(endpoint.secret, headers=second.headers, body=second.body)


def test_the_sweep_sends_what_is_due(alice, receiver):
    hook = receiver()
    _endpoint(alice, hook.url)
    _event(alice), _event(alice)
    assert sweep() == 2


def test_old_delivered_and_dead_events_are_pruned_but_pending_ones_stay(alice, receiver, settings):
    _endpoint(alice, receiver().url)
    delivered, dead, pending = _event(alice), _event(alice), _event(alice)
    deliver(delivered.pk)
    Event.objects.filter(pk=dead.pk).update(status=EventStatus.DEAD)
    Event.objects.update(created_at=timezone.now() - timedelta(seconds=settings.OUTBOUND_KEEP_SECONDS + 1))
    assert prune() == 2
    assert list(Event.objects.values_list("pk", flat=True)) == [pending.pk]
    assert DeliveryAttempt.objects.count() == 0


def test_the_verification_in_the_docs_verifies_a_real_delivery(alice, receiver):
    text = (REPO_ROOT / "docs" / "webhooks.md").read_text()
    snippet = text.split("### Verifying a signature", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(snippet, namespace)  # the documentation's own code, as a receiver would paste it
    hook = receiver()
    endpoint = _endpoint(alice, hook.url)
    deliver(_event(alice).pk)
    [got] = hook.received
    assert namespace["verify"](endpoint.secret, got.headers, got.body)
    assert not namespace["verify"](endpoint.secret, got.headers, got.body + b" ")
