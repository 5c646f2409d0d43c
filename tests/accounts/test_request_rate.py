"""Request rates per user from their quota: over the rate, 429 `throttled` with Retry-After; other users, and users
without a rate, are not limited."""
from accounts.models import Quota


def test_requests_over_the_rate_answer_429_with_retry_after(alice):
    Quota.objects.create(user=alice.user, requests_per_minute=3)
    assert [alice.client.get("/api/v1/jobs/").status_code for _ in range(3)] == [200] * 3
    response = alice.client.get("/api/v1/jobs/")
    assert response.status_code == 429
    assert response.json()["code"] == "throttled"
    assert 1 <= int(response["Retry-After"]) <= 60


def test_the_rate_counts_every_route_of_the_user(alice):
    Quota.objects.create(user=alice.user, requests_per_minute=2)
    alice.client.get("/api/v1/jobs/")
    alice.client.get("/api/v1/functions/")
    assert alice.client.get("/models").status_code == 429


def test_other_users_are_not_slowed_by_one_users_rate(alice, bob):
    Quota.objects.create(user=alice.user, requests_per_minute=1)
    alice.client.get("/api/v1/jobs/")
    assert alice.client.get("/api/v1/jobs/").status_code == 429
    assert bob.client.get("/api/v1/jobs/").status_code == 200


def test_without_a_rate_there_is_no_limit(alice, bob):
    Quota.objects.create(user=bob.user, monthly_tokens=100)
    for account in (alice, bob):
        assert {account.client.get("/api/v1/jobs/").status_code for _ in range(30)} == {200}
