"""Code is checked on upload: size, zip safety (path traversal, links), main.py present, Python syntax."""
import base64

import pytest

from jobs.models import Function
from tests.support.jobs import make_zip

HANDLER = "def handler(event, context):\n    return event\n"


def deploy_zip(account, archive: bytes, name: str = "zipped"):
    return account.client.post("/api/v1/functions/", {"name": name, "codeBase64": base64.b64encode(archive).decode()},
                               format="json")


def assert_refused(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["code"] == code
    assert body["detail"]
    assert Function.objects.count() == 0
    return body


def test_it_rejects_code_larger_than_the_limit_with_413(alice, settings):
    settings.FUNCTION_MAX_CODE_BYTES = 1000
    code = "x = 1\n" + "# padding\n" * 200
    response = alice.client.post("/api/v1/functions/", {"name": "big", "code": code}, format="json")
    assert_refused(response, 413, "code_too_large")


def test_it_rejects_a_zip_that_unpacks_past_the_limit(alice, settings):
    settings.FUNCTION_MAX_UNPACKED_BYTES = 10_000
    archive = make_zip({"main.py": HANDLER, "blob.txt": "0" * 50_000})  # compresses to almost nothing
    assert len(archive) < 10_000
    assert_refused(deploy_zip(alice, archive), 413, "code_too_large")


@pytest.mark.parametrize("member", ["../evil.py", "pkg/../../evil.py", "/etc/evil.py", "C:/evil.py",
                                    "..\\evil.py"])
def test_it_rejects_a_zip_with_path_traversal(alice, member):
    archive = make_zip({"main.py": HANDLER, member: "x = 1\n"})
    assert_refused(deploy_zip(alice, archive), 400, "unsafe_path")


def test_it_rejects_a_zip_holding_a_symlink(alice):
    archive = make_zip({"main.py": HANDLER}, links={"passwd": "/etc/passwd"})
    assert_refused(deploy_zip(alice, archive), 400, "zip_link")


def test_it_rejects_a_zip_without_main_py(alice):
    archive = make_zip({"handler.py": HANDLER})
    assert_refused(deploy_zip(alice, archive), 400, "missing_main")


def test_it_rejects_a_zip_whose_main_py_is_not_at_the_top(alice):
    archive = make_zip({"a/main.py": HANDLER, "b/other.py": "x = 1\n"})
    assert_refused(deploy_zip(alice, archive), 400, "missing_main")


def test_it_rejects_bytes_that_are_not_a_zip(alice):
    assert_refused(deploy_zip(alice, b"PK\x03\x04 but not really a zip file"), 400, "bad_zip")


def test_it_rejects_a_zip_with_too_many_files(alice, settings):
    settings.FUNCTION_MAX_FILES = 3
    archive = make_zip({"main.py": HANDLER, **{f"m{n}.py": "x = 1\n" for n in range(5)}})
    assert_refused(deploy_zip(alice, archive), 400, "too_many_files")


def test_it_rejects_a_syntax_error_and_gives_its_line(alice):
    code = "def handler(event, context):\n    return event\n\nif True\n    pass\n"
    response = alice.client.post("/api/v1/functions/", {"name": "broken", "code": code}, format="json")
    body = assert_refused(response, 400, "syntax_error")
    assert body["line"] == 4
    assert body["file"] == "main.py"
    assert "line 4" in body["detail"]


def test_it_checks_the_syntax_of_every_module_in_a_zip(alice):
    archive = make_zip({"main.py": HANDLER, "lib/util.py": "x = (\n"})
    body = assert_refused(deploy_zip(alice, archive), 400, "syntax_error")
    assert body["file"] == "lib/util.py"


def test_it_rejects_code_that_is_not_utf8(alice):
    archive = make_zip({"main.py": b"x = '\xff\xfe'\n"})
    assert_refused(deploy_zip(alice, archive), 400, "not_utf8")


def test_a_rejected_upload_as_a_file_has_the_same_error(alice):
    import io

    upload = io.BytesIO(make_zip({"../../escape.py": "x = 1\n", "main.py": HANDLER}))
    upload.name = "code.zip"
    response = alice.client.post("/api/v1/functions/", {"name": "f", "file": upload}, format="multipart")
    assert_refused(response, 400, "unsafe_path")
