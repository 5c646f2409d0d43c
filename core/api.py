"""One error shape for the whole API, and the default pagination.

Every error answers `{"detail": "...", "code": "..."}`; validation errors keep DRF's field shape and add
`code: "invalid"`. Services raise `core.errors.DomainError`s; nobody hand-builds an error Response.
"""
import logging
import sys
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework.exceptions import APIException, NotFound, ValidationError
from rest_framework.pagination import CursorPagination, PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from .errors import DomainError

logger = logging.getLogger(__name__)

# A database that refuses a connection or a statement is the one failure a caller can only wait out.
DATABASE_DOWN = (OperationalError, InterfaceError)
DATABASE_DOWN_ANSWER = {"detail": "The database is unavailable; try again shortly.", "code": "database_unavailable"}
RETRY_AFTER_SECONDS = "5"


class Pagination(PageNumberPagination):
    """Pages of `page_size` (1-500); `page` must be a positive integer. Anything else answers 400 (where DRF would
    quietly fall back to its defaults), and a page past the end answers 404."""

    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_size(self, request: Request) -> int:
        self._check_number(request, self.page_query_param, None)
        self._check_number(request, self.page_size_query_param, self.max_page_size)
        return super().get_page_size(request)

    @staticmethod
    def _check_number(request: Request, name: str, most: int | None) -> None:
        if name in request.query_params:
            raw = request.query_params[name]
            if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= (most or int(raw))):
                raise ValidationError({name: [f"An integer from 1{f' to {most}' if most else ''}."]})

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"]["minimum"] = 1
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"]["maximum"] = self.max_page_size
        return parameters


class Cursor(CursorPagination):
    """Pages of `page_size` (1-500) that follow a cursor (`next`), for lists that grow at their end while a client
    reads them (receipts): a row is never skipped or seen twice. Views set `ordering` (a unique, unchanging field)."""

    page_size_query_param = "page_size"
    max_page_size = 500
    page_size = 100

    def get_page_size(self, request: Request) -> int:
        Pagination._check_number(request, self.page_size_query_param, self.max_page_size)
        return super().get_page_size(request)

    def decode_cursor(self, request: Request) -> Any:
        """A cursor this list did not give is the caller's mistake (400 `invalid_cursor`), not a missing page."""
        try:
            return super().decode_cursor(request)
        except NotFound:
            raise DomainError("The cursor is not one that this list gave.", code="invalid_cursor") from None


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DomainError):
        return Response({"detail": exc.detail, "code": exc.code, **exc.extra}, status=exc.status)
    if isinstance(exc, DATABASE_DOWN):
        logger.error("database unavailable: %s", exc)
        return Response(DATABASE_DOWN_ANSWER, status=503, headers={"Retry-After": RETRY_AFTER_SECONDS})
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, (Http404, PermissionDenied)):  # Django's own, which DRF answers without a code
        response.data = {"detail": str(response.data.get("detail", "")),
                         "code": "not_found" if isinstance(exc, Http404) else "permission_denied"}
        return response
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
