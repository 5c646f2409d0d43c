"""The webhooks API: endpoints and their secrets (shown once), callback secrets, deliveries and their redelivery;
each user sees only their own."""
import pytest

from outbound import services
from outbound.models import Event, EventStatus
from tests.support.jobs import deploy

pytestmark = pytest.mark.django_db


def _register(account, url, types=("job.succeeded", "job.failed")):
    return account.client.post("/api/v1/webhooks/", {"url": url, "eventTypes": list(types)}, format="json")


def test_registering_an_endpoint_shows_its_secret_once(alice, receiver):
    response = _register(alice, receiver().url)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["secret"].startswith("whsec_")
    shown = alice.client.get(f"/api/v1/webhooks/{body['id']}").json()
    assert "secret" not in shown and shown["eventTypes"] == ["job.succeeded", "job.failed"]
    assert [e["id"] for e in alice.client.get("/api/v1/webhooks/").json()["results"]] == [body["id"]]


def test_an_endpoint_at_a_private_address_is_refused(alice):
    response = _register(alice, "http://10.0.0.5/hook")
    assert (response.status_code, response.json()["code"]) == (400, "destination_not_allowed")


def test_an_unknown_event_type_is_refused(alice, receiver):
    response = _register(alice, receiver().url, types=["job.exploded"])
    assert response.status_code == 400


def test_rotating_a_secret_shows_the_new_one_and_keeps_the_old_for_the_overlap(alice, receiver):
    endpoint = _register(alice, receiver().url).json()
    rotated = alice.client.post(f"/api/v1/webhooks/{endpoint['id']}/rotate-secret").json()
    assert rotated["secret"] != endpoint["secret"] and rotated["previousSecretValidUntil"]


def test_charlie_cannot_see_or_change_alices_endpoints_or_deliveries(alice, charlie, receiver):
    endpoint = _register(alice, receiver().url).json()
    [event] = services.record(owner_id=alice.id, event_type="job.succeeded", data=dict)
    assert charlie.client.get("/api/v1/webhooks/").json()["results"] == []
    assert charlie.client.get(f"/api/v1/webhooks/{endpoint['id']}").status_code == 404
    assert charlie.client.patch(f"/api/v1/webhooks/{endpoint['id']}", {"active": False},
                                format="json").status_code == 404
    assert charlie.client.get("/api/v1/deliveries/").json()["results"] == []
    assert charlie.client.get(f"/api/v1/deliveries/{event.pk}").status_code == 404
    assert charlie.client.post(f"/api/v1/deliveries/{event.pk}/redeliver").status_code == 404


def test_a_dead_delivery_is_redelivered_through_the_api(alice, receiver):
    _register(alice, receiver().url)
    [event] = services.record(owner_id=alice.id, event_type="job.failed", data=dict)
    Event.objects.filter(pk=event.pk).update(status=EventStatus.DEAD, attempts=7)
    listed = alice.client.get("/api/v1/deliveries/?status=dead").json()["results"]
    assert [d["eventId"] for d in listed] == [event.event_id]
    again = alice.client.post(f"/api/v1/deliveries/{event.pk}/redeliver").json()
    assert (again["status"], again["attempts"], again["eventId"]) == ("pending", 0, event.event_id)


def test_a_run_with_a_callback_url_needs_a_callback_secret(alice, served_models, receiver):
    function = deploy(alice, "def handler(event, context):\n    return 1\n")
    body = {"functionId": function["functionId"], "callbackUrl": receiver().url}
    refused = alice.client.post("/run", body, format="json", HTTP_X_ASYNC="true")
    assert (refused.status_code, refused.json()["code"]) == (400, "no_callback_secret")
    secret = alice.client.post("/api/v1/webhooks/callback-secret").json()["secret"]
    assert secret.startswith("whsec_")
    accepted = alice.client.post("/run", body, format="json", HTTP_X_ASYNC="true")
    assert accepted.status_code == 202, accepted.content


def test_a_run_with_a_callback_url_at_a_private_address_is_refused(alice, served_models):
    function = deploy(alice, "def handler(event, context):\n    return 1\n")
    alice.client.post("/api/v1/webhooks/callback-secret")
    body = {"functionId": function["functionId"], "callbackUrl": "http://192.168.0.10/cb"}
    refused = alice.client.post("/run", body, format="json", HTTP_X_ASYNC="true")
    assert (refused.status_code, refused.json()["code"]) == (400, "destination_not_allowed")
