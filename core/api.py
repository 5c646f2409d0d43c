"""One error shape for the whole API, and the default pagination.

Every error answers `{"detail": "...", "code": "..."}`; validation errors keep DRF's field shape and add
`code: "invalid"`. Services raise `core.errors.DomainError`s; nobody hand-builds an error Response.
"""
from typing import Any

import logging
import sys

from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, JsonResponse
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from .errors import DomainError

logger = logging.getLogger(__name__)

# A database that refuses a connection or a statement is the one failure a caller can only wait out.
DATABASE_DOWN = (OperationalError, InterfaceError)
DATABASE_DOWN_ANSWER = {"detail": "The database is unavailable; try again shortly.", "code": "database_unavailable"}
RETRY_AFTER_SECONDS = "5"


class Pagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 500


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DomainError):
        return Response({"detail": exc.detail, "code": exc.code, **exc.extra}, status=exc.status)
    if isinstance(exc, DATABASE_DOWN):
        logger.error("database unavailable: %s", exc)
        return Response(DATABASE_DOWN_ANSWER, status=503, headers={"Retry-After": RETRY_AFTER_SECONDS})
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, ValidationError):
        data = response.data if isinstance(response.data, dict) else {"non_field_errors": response.data}
        response.data = {"detail": "Invalid input.", "code": "invalid", "errors": data}
        return response
    if isinstance(exc, APIException):
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else "error"
        response.data = {"detail": str(exc.detail), "code": code}
    return response


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    """Unknown routes answer in the API's error shape, not with an HTML page."""
    return JsonResponse({"detail": f"No route {request.path}.", "code": "not_found"}, status=404)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    """Django's own refusals (a body past DATA_UPLOAD_MAX_MEMORY_SIZE, a malformed request) in the API's shape."""
    if isinstance(exception, RequestDataTooBig):
        return JsonResponse({"detail": "The request body is larger than this server accepts.",
                             "code": "request_too_large"}, status=413)
    return JsonResponse({"detail": "Bad request.", "code": "bad_request"}, status=400)


def server_error(request: HttpRequest) -> JsonResponse:
    """Django calls this inside its `except` block, so the exception is still at hand: a database that is down
    answers 503 here too (pages outside the API, middleware such as sessions)."""
    if isinstance(sys.exc_info()[1], DATABASE_DOWN):
        response = JsonResponse(DATABASE_DOWN_ANSWER, status=503)
        response["Retry-After"] = RETRY_AFTER_SECONDS
        return response
    return JsonResponse({"detail": "Internal server error.", "code": "internal_error"}, status=500)
