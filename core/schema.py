"""The API's OpenAPI description (drf-spectacular): its one error shape, and the errors every operation can answer.

Views declare their own answers and the error codes particular to them with `errors(...)`; the AutoSchema below
adds what any operation may answer: 401 without a valid key, 429 when throttled (with `Retry-After`), 400 for an
invalid body or query, 404 for a page past the end of a list or an unknown id in the path, and 415 for a body in a
media type the operation does not take.
"""
import re
from collections import defaultdict
from typing import Any

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

# What the common answers mean, by status; the codes are those `core.api.exception_handler` gives them.
COMMON_ERRORS = {
    400: "Invalid input: `invalid` (with `errors` per field) or `parse_error`.",
    401: "No key, or a key that is unknown or revoked: `not_authenticated`, `bad_api_key`.",
    404: "Not found: `not_found` (a page past the end, an unknown route).",
    415: "The body's media type is not one this operation takes: `unsupported_media_type`.",
    429: "Too many requests for your quota: `throttled`; retry after `Retry-After` seconds.",
}


class ErrorSerializer(serializers.Serializer):
    """Every error of the API. Some carry more fields (validation errors `errors`, quota errors what is left)."""

    detail = serializers.CharField(help_text="What went wrong, for a person.")
    code = serializers.CharField(help_text="What went wrong, for a program: stable, snake_case.")
    errors = serializers.DictField(required=False, help_text="Validation errors: a list of messages per field.",
                                   child=serializers.JSONField())


def errors(*entries: tuple[int, str]) -> dict[int, OpenApiResponse]:
    """Error answers of an operation, from (status, code) pairs: `errors((404, "job_not_found"), (409, ...))`."""
    codes: dict[int, list[str]] = defaultdict(list)
    for status, code in entries:
        codes[status].append(code)
    return {status: OpenApiResponse(ErrorSerializer, description=", ".join(f"`{c}`" for c in names))
            for status, names in codes.items()}


class AutoSchema(SpectacularAutoSchema):
    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        for status in self._common_error_statuses():
            key = str(status)
            if key not in responses:
                responses[key] = self._get_response_for_code(ErrorSerializer, key, direction=direction)
                responses[key]["description"] = COMMON_ERRORS[status]
            elif status in COMMON_ERRORS:
                # The view's own codes for this status, and the common ones.
                own = responses[key].get("description", "")
                responses[key]["description"] = f"{own}; {COMMON_ERRORS[status]}" if own else COMMON_ERRORS[status]
        return responses

    def get_operation_id(self) -> str:
        # The original platform's routes share views with /api/v1/ ones; each is named after its path instead.
        if not self.path.startswith("/api/"):
            return self.path.strip("/").split("/")[0]
        return super().get_operation_id().replace(".", "_")

    def get_tags(self) -> list[str]:
        return super().get_tags() if self.path.startswith("/api/") else ["original platform's routes"]

    def _common_error_statuses(self) -> list[int]:
        statuses = []
        if self.get_auth():
            statuses += [401, 429]
        if self.method in ("POST", "PUT", "PATCH") or self.get_filter_backends() or self._is_list_view() \
                or self._query_parameters():
            statuses += [400]
        if self.method in ("POST", "PUT", "PATCH"):
            statuses += [415]
        if "{" in self.path or self._is_list_view():
            statuses += [404]
        return statuses

    def _query_parameters(self) -> bool:
        return any(p.get("in") == "query" for p in self._get_parameters())

    def _get_response_headers_for_code(self, status_code: str, direction: str = "response") -> dict[str, Any]:
        headers = super()._get_response_headers_for_code(status_code, direction)
        if status_code == "429":
            headers["Retry-After"] = {"schema": {"type": "integer"},
                                      "description": "Seconds to wait before the next request is allowed."}
        return headers


# The routers' routes take an optional trailing slash ("/?"), like the original platform's; the schema names each
# once, with the slash.
OPTIONAL_SLASH = re.compile(r"/\?$")


def optional_trailing_slashes(endpoints: list[tuple], **kwargs: Any) -> list[tuple]:
    """drf-spectacular preprocessing hook: `/api/v1/jobs/?` is documented as `/api/v1/jobs/`."""
    return [(OPTIONAL_SLASH.sub("/", path), regex, method, callback) for path, regex, method, callback in endpoints]
