"""Requests authenticate with a per-user API key: `Authorization: Bearer KEY` or the original `x-api-key: KEY`."""
import hashlib

import pytest
from rest_framework.test import APIClient

from accounts.models import ApiKey
from accounts.services import authenticate_key, create_api_key, revoke_api_key
from tests.support.jobs import deploy

ENDPOINTS = [("get", "/api/v1/functions/"), ("get", "/api/v1/jobs/"), ("post", "/run"),
             ("get", "/status/00000000-0000-0000-0000-000000000000"), ("post", "/deploy")]


@pytest.mark.parametrize("method,path", ENDPOINTS)
def test_no_key_is_401(db, anonymous, method, path):
    response = getattr(anonymous, method)(path)
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("method,path", ENDPOINTS)
def test_a_bad_key_is_401(alice, method, path):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer ain_not-a-real-key")
    response = getattr(client, method)(path)
    assert response.status_code == 401
    assert response.json()["code"] == "bad_api_key"


def test_a_malformed_authorization_header_is_401(alice):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Basic {alice.key}")
    assert client.get("/api/v1/functions/").status_code == 401
    client.credentials(HTTP_AUTHORIZATION="Bearer ")
    assert client.get("/api/v1/functions/").status_code == 401


def test_a_bearer_key_authenticates(alice):
    assert alice.client.get("/api/v1/functions/").status_code == 200


def test_the_x_api_key_header_authenticates(alice):
    deploy(alice, "x = 1\n", name="mine")
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=alice.key)
    response = client.get("/api/v1/functions/")
    assert response.status_code == 200
    assert [f["name"] for f in response.json()["results"]] == ["mine"]


def test_a_bad_x_api_key_is_401(alice):
    client = APIClient()
    client.credentials(HTTP_X_API_KEY="ain_wrong")
    assert client.get("/api/v1/functions/").status_code == 401


def test_a_revoked_key_is_401(alice):
    revoke_api_key(api_key=ApiKey.objects.get(user=alice.user))
    response = alice.client.get("/api/v1/functions/")
    assert response.status_code == 401
    assert response.json()["code"] == "bad_api_key"


def test_revoking_one_key_leaves_the_users_other_keys_working(alice):
    _, second_key = create_api_key(user=alice.user, name="second")
    revoke_api_key(api_key=ApiKey.objects.get(user=alice.user, name="alice's test key"))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {second_key}")
    assert client.get("/api/v1/functions/").status_code == 200
    assert alice.client.get("/api/v1/functions/").status_code == 401


def test_the_key_of_an_inactive_user_is_401(alice):
    alice.user.is_active = False
    alice.user.save()
    assert alice.client.get("/api/v1/functions/").status_code == 401


def test_keys_are_stored_hashed(alice):
    api_key = ApiKey.objects.get(user=alice.user)
    assert api_key.key_hash == hashlib.sha256(alice.key.encode()).hexdigest()
    assert alice.key not in {api_key.key_hash, api_key.prefix, api_key.name}
    assert alice.key.startswith(api_key.prefix)
    assert len(api_key.prefix) < len(alice.key) // 2


def test_each_key_is_unique(alice, bob):
    assert alice.key != bob.key
    assert authenticate_key(alice.key).user == alice.user
    assert authenticate_key(bob.key).user == bob.user


def test_using_a_key_marks_it_used(alice):
    assert ApiKey.objects.get(user=alice.user).last_used_at is None
    alice.client.get("/api/v1/functions/")
    assert ApiKey.objects.get(user=alice.user).last_used_at is not None


def test_a_users_key_only_reaches_their_own_things(alice, charlie):
    function = deploy(alice, "x = 1\n")
    assert charlie.client.get(f"/api/v1/functions/{function['functionId']}/").status_code == 404
    assert alice.client.get(f"/api/v1/functions/{function['functionId']}/").status_code == 200
