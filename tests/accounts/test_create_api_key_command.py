"""`manage.py create_api_key USER`: makes the user when missing and prints the key once."""
import io

from django.contrib.auth.models import User
from django.core.management import call_command
from rest_framework.test import APIClient

from accounts.models import ApiKey


def run_command(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_key", *args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue()


def test_it_creates_the_user_and_prints_a_working_key(db):
    key, messages = run_command("dora", "--name", "laptop")
    assert "created user dora" in messages
    user = User.objects.get(username="dora")
    assert not user.is_staff
    api_key = ApiKey.objects.get(user=user)
    assert api_key.name == "laptop"
    assert key not in (api_key.key_hash, api_key.prefix)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.get("/api/v1/functions/").status_code == 200


def test_it_adds_a_key_to_an_existing_user(alice):
    key, messages = run_command("alice")
    assert "created user" not in messages
    assert ApiKey.objects.filter(user=alice.user).count() == 2
    assert key != alice.key


def test_it_can_make_an_operator_with_full_admin_access(db):
    run_command("ops", "--staff")
    operator = User.objects.get(username="ops")
    assert operator.is_staff and operator.is_superuser
