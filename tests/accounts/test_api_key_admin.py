"""Staff may rename and revoke a key in the admin, never move it to another user nor bring a revoked key back."""
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from accounts.models import ApiKey


def staff_client() -> Client:
    user = User.objects.create_user(username="key-keeper", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=("view_apikey", "change_apikey")))
    client = Client()
    client.force_login(user)
    return client


def change_form(key: ApiKey, **fields) -> dict:
    return {"user": key.user_id, "name": key.name, "revoked_at_0": "", "revoked_at_1": "", **fields}


def test_staff_cannot_move_a_key_to_another_user(alice, bob):
    key = ApiKey.objects.get(user=alice.user)
    response = staff_client().post(f"/admin/accounts/apikey/{key.pk}/change/",
                                   change_form(key, user=bob.user.pk, name="renamed"))
    assert response.status_code == 302, response.content
    key.refresh_from_db()
    assert key.user == alice.user
    assert key.name == "renamed"


def test_staff_cannot_bring_a_revoked_key_back(alice):
    key = ApiKey.objects.get(user=alice.user)
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    staff_client().post(f"/admin/accounts/apikey/{key.pk}/change/", change_form(key))
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert alice.client.get("/api/v1/functions/").status_code == 401


def test_staff_revoke_keys_with_an_action(alice):
    key = ApiKey.objects.get(user=alice.user)
    staff_client().post("/admin/accounts/apikey/", {"action": "revoke_keys", "_selected_action": [str(key.pk)]})
    key.refresh_from_db()
    assert key.revoked_at is not None
