"""A request carries one credential: a valid x-api-key beside any Authorization header is refused, whichever of the
two is valid, so that no proxy or client can be confused about whose request it is."""
import pytest


@pytest.mark.parametrize("authorization", ["Bearer not-a-key", "Basic YWxpY2U6cGFzcw==", "Bearer {key}"])
def test_two_credentials_are_refused_even_when_one_is_valid(alice, anonymous, authorization):
    response = anonymous.get("/api/v1/jobs/", HTTP_X_API_KEY=alice.key,
                             HTTP_AUTHORIZATION=authorization.format(key=alice.key))
    assert response.status_code == 401
    assert response.json()["code"] == "ambiguous_credentials"


def test_either_credential_alone_is_accepted(alice, anonymous):
    assert anonymous.get("/api/v1/jobs/", HTTP_X_API_KEY=alice.key).status_code == 200
    assert anonymous.get("/api/v1/jobs/", HTTP_AUTHORIZATION=f"Bearer {alice.key}").status_code == 200
