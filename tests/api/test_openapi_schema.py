"""The OpenAPI schema at /api/schema/: valid OpenAPI 3, public, and complete: every API route of the URL
configuration, the original platform's included, is in it with its answers and its errors in the one shape."""
import re
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from openapi_spec_validator import validate

from jobs.api.serializers import ExecutionResultSerializer

DOCS_ROUTES = {"/api/schema/", "/api/docs/", "/api/redoc/"}
PLACEHOLDER = re.compile(r"<(?:\w+:)?\w+>|\(\?P<\w+>[^)]*\)|\{\w+\}")


@pytest.fixture
def schema(anonymous) -> dict[str, Any]:
    response = anonymous.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200, response.content
    return response.json()


def _routes(patterns: list, prefix: str = "") -> list[tuple[str, Any]]:
    """(path, view function) of every route of the URL configuration, as Django resolves it."""
    found = []
    for pattern in patterns:
        text = prefix + str(pattern.pattern).lstrip("^").rstrip("$")
        if isinstance(pattern, URLResolver):
            found += _routes(pattern.url_patterns, text)
        elif isinstance(pattern, URLPattern):
            found.append(("/" + text, pattern.callback))
    return found


def _methods(callback: Any) -> set[str]:
    if getattr(callback, "actions", None):  # a ViewSet route: its method -> action map (DRF adds HEAD to it)
        return {method.upper() for method in callback.actions if method not in ("head", "options")}
    view = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    return {method.upper() for method in ("get", "post", "put", "patch", "delete") if hasattr(view, method)}


def _normalised(path: str) -> str:
    """A path with its parameters as {} and an optional trailing slash as a slash: comparable on both sides."""
    return PLACEHOLDER.sub("{}", path).replace("/?", "/").replace("\\.", ".")


def api_routes() -> set[tuple[str, str]]:
    """Every (path, method) that the API answers: the DRF views of the URL configuration, less the docs' own."""
    routes = set()
    for path, callback in _routes(get_resolver().url_patterns):
        is_api = hasattr(callback, "cls") and not path.startswith("/admin/")
        if not is_api or _normalised(path) in DOCS_ROUTES or "format" in path:
            continue
        routes |= {(_normalised(path), method) for method in _methods(callback)}
    # The router's API root view lists the routes and is not part of the contract.
    return {route for route in routes if route[0] != "/api/v1/"}


def test_the_schema_is_valid_openapi_3(schema):
    assert schema["openapi"].startswith("3.")
    validate(schema)


def test_every_route_of_the_api_is_in_the_schema(schema):
    documented = {(_normalised(path), method.upper()) for path, item in schema["paths"].items() for method in item}
    routes = api_routes()
    assert len(routes) >= 15
    assert routes - documented == set(), "routes missing from the OpenAPI schema"


@pytest.mark.parametrize("path, method, answers", [
    ("/run", "post", {"200", "202", "400", "401", "404", "413", "429"}),
    ("/status/{job_id}", "get", {"200", "401", "404", "429"}),
    ("/models", "get", {"200", "401", "429"}),
    ("/deploy", "post", {"201", "400", "401", "409", "413", "429"}),
])
def test_the_original_platforms_routes_are_documented_with_their_answers_and_errors(schema, path, method, answers):
    operation = schema["paths"][path][method]
    assert answers <= set(operation["responses"])
    for status, answer in operation["responses"].items():
        if status.startswith(("4", "5")):
            ref = answer["content"]["application/json"]["schema"]["$ref"]
            assert ref == "#/components/schemas/Error", (path, status)
    assert operation["security"] == [{"BearerAuth": []}, {"ApiKeyHeader": []}]


def test_errors_have_one_documented_shape(schema):
    error = schema["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"detail", "code"}


def test_the_documented_execution_result_is_the_one_the_api_answers(alice):
    from jobs.results import execution_result
    from tests.support.jobs import make_job

    job = make_job(alice, "print('hi')\n")
    assert set(execution_result(job)) == set(ExecutionResultSerializer().fields)


def test_throttled_answers_document_retry_after(schema):
    answer = schema["paths"]["/run"]["post"]["responses"]["429"]
    assert "Retry-After" in answer["headers"]
