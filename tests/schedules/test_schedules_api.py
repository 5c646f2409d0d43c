"""The schedules API: made, paused and resumed by their owner, seen by nobody else."""
import pytest

from tests.support.jobs import deploy

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("served_models")]

CODE = "def handler(event, context):\n    return event\n"


def _schedule(account, **fields):
    function = deploy(account, CODE)
    body = {"name": "nightly", "functionId": function["functionId"], "cron": "0 3 * * *", "inputData": {"a": 1},
            **fields}
    return account.client.post("/api/v1/schedules/", body, format="json")


def test_a_schedule_is_made_paused_and_resumed(alice):
    made = _schedule(alice)
    assert made.status_code == 201, made.content
    schedule = made.json()
    assert (schedule["cron"], schedule["paused"], schedule["overlap"]) == ("0 3 * * *", False, "skip")
    assert schedule["nextRunAt"].endswith("T03:00:00Z")
    paused = alice.client.post(f"/api/v1/schedules/{schedule['id']}/pause").json()
    assert paused["paused"] is True
    resumed = alice.client.post(f"/api/v1/schedules/{schedule['id']}/resume").json()
    assert resumed["paused"] is False
    assert alice.client.get(f"/api/v1/schedules/{schedule['id']}/runs").json()["results"] == []


def test_an_interval_replaces_the_cron_expression(alice):
    schedule = _schedule(alice).json()
    changed = alice.client.patch(f"/api/v1/schedules/{schedule['id']}", {"intervalSeconds": 600}, format="json")
    assert changed.status_code == 200, changed.content
    assert (changed.json()["cron"], changed.json()["intervalSeconds"]) == ("", 600)


@pytest.mark.parametrize("fields, code", [({"cron": "61 * * * *"}, "invalid_cron"),
                                          ({"cron": "", "intervalSeconds": 1}, "invalid"),
                                          ({"intervalSeconds": 60}, "invalid_schedule")])
def test_it_refuses_bad_timing(alice, fields, code):
    response = _schedule(alice, **fields)
    assert (response.status_code, response.json()["code"]) == (400, code)


def test_charlie_cannot_see_or_pause_alices_schedule(alice, charlie):
    schedule = _schedule(alice).json()
    assert charlie.client.get("/api/v1/schedules/").json()["results"] == []
    assert charlie.client.get(f"/api/v1/schedules/{schedule['id']}").status_code == 404
    assert charlie.client.post(f"/api/v1/schedules/{schedule['id']}/pause").status_code == 404
    assert charlie.client.get(f"/api/v1/schedules/{schedule['id']}/runs").status_code == 404


def test_nobody_schedules_another_users_function(alice, charlie):
    function = deploy(alice, CODE)
    response = charlie.client.post("/api/v1/schedules/", {"name": "x", "functionId": function["functionId"],
                                                          "cron": "@daily"}, format="json")
    assert (response.status_code, response.json()["code"]) == (404, "function_not_found")
