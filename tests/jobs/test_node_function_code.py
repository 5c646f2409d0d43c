"""Deploying node code through the API: its runtime, its entry file, and what is (not) checked on the host."""
import base64

import pytest

from tests.support.jobs import make_zip

pytestmark = pytest.mark.django_db


def deploy(account, **body):
    return account.client.post("/api/v1/functions/", {"name": "fn", **body}, format="json")


def test_a_zip_with_index_js_and_no_main_py_is_a_node_function(alice):
    zipped = base64.b64encode(make_zip({"app/index.js": "exports.handler = () => 1;\n"})).decode()
    response = deploy(alice, codeBase64=zipped)
    assert response.status_code == 201, response.content
    assert (response.json()["runtime"], response.json()["files"]) == ("node", ["index.js"])


def test_code_given_as_text_with_runtime_node_is_index_js(alice):
    response = deploy(alice, code="exports.handler = () => 1;\n", runtime="node")
    assert response.status_code == 201, response.content
    assert (response.json()["runtime"], response.json()["files"]) == ("node", ["index.js"])


def test_a_python_function_stays_the_default(alice):
    response = deploy(alice, code="def handler(event, context):\n    return 1\n")
    assert response.json()["runtime"] == "python"


def test_an_unknown_runtime_is_refused(alice):
    response = deploy(alice, code="print(1)\n", runtime="ruby")
    assert response.status_code == 400
    assert "runtime" in response.json()["errors"]


def test_a_node_zip_without_an_entry_file_is_refused(alice):
    zipped = base64.b64encode(make_zip({"lib.js": "exports.x = 1;\n"})).decode()
    response = deploy(alice, codeBase64=zipped, runtime="node")
    assert (response.status_code, response.json()["code"]) == (400, "missing_main")


def test_javascript_that_is_not_utf8_is_refused(alice):
    zipped = base64.b64encode(make_zip({"index.js": b"\xff\xfe bad"})).decode()
    response = deploy(alice, codeBase64=zipped)
    assert (response.status_code, response.json()["code"]) == (400, "not_utf8")


def test_javascript_is_not_parsed_on_the_host_so_a_syntax_error_is_left_to_the_job(alice):
    response = deploy(alice, code="exports.handler = (event => {\n", runtime="node")
    assert response.status_code == 201


def test_an_update_with_new_code_keeps_the_node_runtime(alice):
    function_id = deploy(alice, code="exports.handler = () => 1;\n", runtime="node").json()["functionId"]
    response = alice.client.patch(f"/api/v1/functions/{function_id}/", {"code": "exports.handler = () => 2;\n"},
                                  format="json")
    assert (response.json()["version"], response.json()["runtime"]) == (2, "node")
