from typing import Any

from django.contrib.auth.models import User
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from .models import ApiKey
from .services import authenticate_key


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Bearer KEY`, or the original platform's `x-api-key: KEY` header."""

    def authenticate(self, request: Request) -> tuple[User, ApiKey] | None:
        raw_key = request.headers.get("x-api-key", "")
        authorization = request.headers.get("Authorization", "")
        if raw_key and authorization:
            # Which one would be meant? Neither is guessed: a client that sends two credentials is told so.
            raise AuthenticationFailed("Send one credential: either x-api-key or Authorization, not both.",
                                       code="ambiguous_credentials")
        if not raw_key and authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthenticationFailed("Malformed Authorization header; use 'Bearer KEY'.", code="bad_api_key")
            raw_key = token.strip()
        if not raw_key:
            return None
        api_key = authenticate_key(raw_key)
        if api_key is None:
            raise AuthenticationFailed("Invalid or revoked API key.", code="bad_api_key")
        return api_key.user, api_key

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) when no key is given.
        return 'Bearer realm="api"'


class ApiKeySchemes(OpenApiAuthenticationExtension):
    """How the OpenAPI schema describes ApiKeyAuthentication: either header will do."""

    target_class = ApiKeyAuthentication
    name = ["BearerAuth", "ApiKeyHeader"]

    def get_security_requirement(self, auto_schema: Any) -> list[dict[str, list]]:
        return [{"BearerAuth": []}, {"ApiKeyHeader": []}]

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, str]]:
        return [{"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
                {"type": "apiKey", "in": "header", "name": "x-api-key"}]
