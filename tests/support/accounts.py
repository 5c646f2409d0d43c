"""Users, one API key of theirs and an API client that sends it; the models the catalogue says a node serves."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# --- users, keys and clients ------------------------------------------------------------------------------------

@dataclass
class Account:
    """A user, one API key of theirs and an API client that sends it."""

    user: Any
    key: str
    client: Any

    @property
    def id(self) -> int:
        return self.user.pk


def make_account(username: str, *, staff: bool = False, superuser: bool = False) -> Account:
    from django.contrib.auth.models import User
    from rest_framework.test import APIClient

    from accounts.services import create_api_key

    user = User.objects.create_user(username=username, email=f"{username}@example.org", is_staff=staff,
                                    is_superuser=superuser)
    _, key = create_api_key(user=user, name=f"{username}'s test key")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return Account(user=user, key=key, client=client)


def as_json(response: Any) -> Any:
    return json.loads(response.content or b"null")


# --- the model catalogue ----------------------------------------------------------------------------------------

# Models that the catalogue says a node serves (the `served_models` fixture). No test that uses them calls a model:
# the node's URL is a port on 127.0.0.1 where nothing listens.
SERVED_MODELS = ("smollm2:135m", "llama3.2:1b", "model-a", "model-b")
