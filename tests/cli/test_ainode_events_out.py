"""`ainode webhooks` and `ainode schedules` against the live API, run as a user would."""
import json

import pytest

from outbound.models import WebhookEndpoint
from schedules.models import Schedule
from tests.fixtures.receivers import LOOPBACK
from tests.support.jobs import deploy

pytestmark = pytest.mark.usefixtures("served_models")


@pytest.fixture
def loopback_allowed(settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = [LOOPBACK]


def test_webhooks_are_added_listed_and_rotated(ainode, api, loopback_allowed):
    added = ainode("webhooks", "add", "http://127.0.0.1:9/hook", "job.failed", "quota.threshold")
    assert added.returncode == 0, added.stderr
    assert "secret (shown once" in added.stdout
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.event_types == ["job.failed", "quota.threshold"]
    listed = ainode("webhooks", "list", "--json")
    assert [e["id"] for e in json.loads(listed.stdout)] == [str(endpoint.pk)]
    rotated = ainode("webhooks", "rotate", str(endpoint.pk), "--json")
    assert json.loads(rotated.stdout)["secret"] != endpoint.secret
    assert ainode("webhooks", "deliveries").returncode == 0


def test_a_webhook_to_a_private_address_is_refused(ainode, api):
    refused = ainode("webhooks", "add", "http://10.0.0.1/hook")
    assert refused.returncode == 3 and "destination_not_allowed" in refused.stderr


def test_a_schedule_is_added_by_function_name_paused_and_resumed(ainode, api):
    deploy(api.account, "def handler(event, context):\n    return event\n", name="report")
    added = ainode("schedules", "add", "report", "--cron", "0 3 * * *", "--input", '{"day": 1}', "--json")
    assert added.returncode == 0, added.stderr
    schedule = Schedule.objects.get()
    assert (schedule.cron, schedule.input_data, schedule.function.name) == ("0 3 * * *", {"day": 1}, "report")
    assert ainode("schedules", "pause", str(schedule.pk)).returncode == 0
    schedule.refresh_from_db()
    assert schedule.paused
    assert ainode("schedules", "resume", str(schedule.pk)).returncode == 0
    listed = ainode("schedules", "list")
    assert "0 3 * * *" in listed.stdout and "report" in listed.stdout
