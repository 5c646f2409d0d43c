"""The operator's admin for events out: endpoints made with a secret shown once, the outbox with its log and
redelivery, schedules paused and resumed."""
import pytest
from django.test import Client

from jobs.services import deploy_function
from outbound import services
from outbound.models import Event, EventStatus, WebhookEndpoint
from schedules import services as schedules
from schedules.models import Schedule

pytestmark = pytest.mark.django_db


def admin_client(account) -> Client:
    client = Client()
    client.force_login(account.user)
    return client


def test_an_endpoint_added_in_the_admin_gets_a_secret_shown_once(operator, alice):
    client = admin_client(operator)
    assert client.get("/admin/outbound/webhookendpoint/add/").status_code == 200
    response = client.post("/admin/outbound/webhookendpoint/add/", {
        "owner": alice.user.pk, "url": "https://hooks.example.org/x", "description": "",
        "event_types": '["job.failed"]', "active": "on"}, follow=True)
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.secret.startswith("whsec_") and endpoint.owner == alice.user
    assert endpoint.secret in response.content.decode()
    assert endpoint.secret not in client.get(f"/admin/outbound/webhookendpoint/{endpoint.pk}/change/").content.decode()


def test_the_outbox_shows_every_users_events_and_redelivers_a_dead_one(operator, alice, charlie):
    for account in (alice, charlie):
        services.create_endpoint(owner=account.user, url="https://hooks.example.org/x", event_types=["job.failed"])
        services.record(owner_id=account.id, event_type="job.failed", data=dict)
    dead = Event.objects.filter(owner=alice.user).get()
    Event.objects.filter(pk=dead.pk).update(status=EventStatus.DEAD, attempts=7)
    client = admin_client(operator)
    page = client.get("/admin/outbound/event/").content.decode()
    assert page.count("job.failed") >= 2
    assert client.get(f"/admin/outbound/event/{dead.pk}/change/").status_code == 200
    client.post("/admin/outbound/event/", {"action": "redeliver", "_selected_action": [dead.pk]})
    dead.refresh_from_db()
    assert (dead.status, dead.attempts) == (EventStatus.PENDING, 0)


def test_schedules_are_paused_and_resumed_in_the_admin(operator, alice, served_models):
    function = deploy_function(owner=alice.user, name="f", code=b"def handler(e, c):\n    return 1\n")
    schedule = schedules.create_schedule(owner=alice.user, function=function, name="s", cron="@hourly")
    client = admin_client(operator)
    assert client.get(f"/admin/schedules/schedule/{schedule.pk}/change/").status_code == 200
    client.post("/admin/schedules/schedule/", {"action": "pause", "_selected_action": [schedule.pk]})
    assert Schedule.objects.get().paused
    client.post("/admin/schedules/schedule/", {"action": "resume", "_selected_action": [schedule.pk]})
    assert not Schedule.objects.get().paused
