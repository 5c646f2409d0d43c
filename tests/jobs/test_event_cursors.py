"""A Last-Event-ID is checked whole before it is used: with Redis, an id followed by a newline (`lastEventId=1-0%0A`)
is refused with 400, not taken for an id that then crashes the stream."""
import pytest

from tests.support.brokers import REDIS_TEST_URL
from tests.support.jobs import deploy, submit


@pytest.mark.parametrize("cursor", ["1-0\n", "1-0\n\n", "\n1-0", "1-0 ", "1-"])
def test_a_redis_cursor_with_anything_around_it_is_refused(alice, served_models, settings, cursor):
    settings.REDIS_URL = REDIS_TEST_URL
    job_id = submit(alice, deploy(alice, "print('hi')\n")["functionId"]).json()["jobId"]
    response = alice.client.get(f"/api/v1/jobs/{job_id}/events/", {"lastEventId": cursor})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_last_event_id"
