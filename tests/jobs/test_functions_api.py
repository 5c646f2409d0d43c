"""/api/v1/functions/ (and the original /deploy): deploy as text, as a file upload or as a zip; list, show,
update (a new version) and delete; and nobody sees another user's functions."""
import base64
import io

import pytest

from jobs.models import Function, FunctionVersion, Job
from tests.support.jobs import deploy, make_zip

pytestmark = pytest.mark.usefixtures("served_models")


HANDLER = "def handler(event, context):\n    return event\n"


def test_it_deploys_code_given_as_text(alice):
    response = alice.client.post("/api/v1/functions/", {
        "name": "echo", "code": HANDLER, "memoryMb": 128, "timeoutSeconds": 10, "env": {"GREETING": "hi"},
    }, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "echo"
    assert body["version"] == 1
    assert (body["memoryMb"], body["timeoutSeconds"], body["env"]) == (128, 10, {"GREETING": "hi"})
    assert body["files"] == ["main.py"]
    assert len(body["sha256"]) == 64
    assert "code" not in body  # code never goes out
    function = Function.objects.get(pk=body["functionId"])
    assert function.owner == alice.user


def test_the_original_deploy_route_works_too(alice):
    response = alice.client.post("/deploy", {"name": "legacy", "code": HANDLER}, format="json")
    assert response.status_code == 201, response.content
    assert Function.objects.filter(pk=response.json()["functionId"], owner=alice.user).exists()


def test_it_applies_the_default_memory_and_timeout(alice, settings):
    body = deploy(alice, HANDLER)
    assert (body["memoryMb"], body["timeoutSeconds"]) == (settings.JOB_DEFAULT_MEMORY_MB, settings.JOB_DEFAULT_TIMEOUT)


def test_it_deploys_main_py_as_a_multipart_file_upload(alice):
    upload = io.BytesIO(HANDLER.encode())
    upload.name = "main.py"
    response = alice.client.post("/api/v1/functions/", {"name": "uploaded", "file": upload, "memoryMb": "64"},
                                 format="multipart")
    assert response.status_code == 201, response.content
    assert response.json()["files"] == ["main.py"]
    assert response.json()["memoryMb"] == 64


def test_it_deploys_a_zip_given_as_base64(alice):
    archive = make_zip({"main.py": "import helper\n" + HANDLER, "helper.py": "X = 1\n", "pkg/__init__.py": ""})
    response = alice.client.post("/api/v1/functions/", {
        "name": "zipped", "codeBase64": base64.b64encode(archive).decode(),
    }, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["files"] == ["helper.py", "main.py", "pkg/__init__.py"]


def test_it_deploys_a_zip_uploaded_as_a_file(alice):
    upload = io.BytesIO(make_zip({"main.py": HANDLER, "data.txt": "hello"}))
    upload.name = "code.zip"
    response = alice.client.post("/api/v1/functions/", {"name": "zip-upload", "file": upload}, format="multipart")
    assert response.status_code == 201, response.content
    assert response.json()["files"] == ["data.txt", "main.py"]


def test_a_zip_of_a_folder_is_taken_as_the_folder_itself(alice):
    archive = make_zip({"project/main.py": HANDLER, "project/lib.py": "Y = 2\n"})
    response = alice.client.post("/api/v1/functions/", {
        "name": "folder", "codeBase64": base64.b64encode(archive).decode(),
    }, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["files"] == ["lib.py", "main.py"]


def test_the_same_code_gives_the_same_hash(alice):
    first = deploy(alice, HANDLER, name="one")
    second = deploy(alice, HANDLER, name="two")
    assert first["sha256"] == second["sha256"]


def test_it_refuses_a_second_live_function_with_the_same_name(alice):
    deploy(alice, HANDLER, name="dup")
    response = alice.client.post("/api/v1/functions/", {"name": "dup", "code": HANDLER}, format="json")
    assert response.status_code == 409
    assert response.json()["code"] == "function_exists"


def test_two_users_may_use_the_same_function_name(alice, bob):
    alices = deploy(alice, HANDLER, name="shared-name")
    bobs = deploy(bob, HANDLER, name="shared-name")
    assert alices["functionId"] != bobs["functionId"]
    for account, own in ((alice, alices), (bob, bobs)):
        listed = account.client.get("/api/v1/functions/").json()["results"]
        assert [(f["functionId"], f["name"]) for f in listed] == [(own["functionId"], "shared-name")]


def test_it_requires_some_code(alice):
    response = alice.client.post("/api/v1/functions/", {"name": "nothing"}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert "code" in body["errors"]


def test_it_requires_a_name(alice):
    response = alice.client.post("/api/v1/functions/", {"code": HANDLER}, format="json")
    assert response.status_code == 400
    assert "name" in response.json()["errors"]


@pytest.mark.parametrize("field,value,code", [
    ("memoryMb", 8, "invalid_memory"),
    ("memoryMb", 10**6, "invalid_memory"),
    ("timeoutSeconds", 10**6, "invalid_timeout"),
])
def test_it_refuses_limits_out_of_range(alice, field, value, code):
    response = alice.client.post("/api/v1/functions/", {"name": "limits", "code": HANDLER, field: value},
                                 format="json")
    assert response.status_code == 400
    assert response.json()["code"] == code


def test_it_refuses_an_invalid_environment_variable_name(alice):
    response = alice.client.post("/api/v1/functions/", {"name": "env", "code": HANDLER, "env": {"1BAD": "x"}},
                                 format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_env"


def test_it_refuses_bad_base64(alice):
    response = alice.client.post("/api/v1/functions/", {"name": "b64", "codeBase64": "not base64!!"}, format="json")
    assert response.status_code == 400
    assert "codeBase64" in response.json()["errors"]


def test_it_lists_only_the_callers_live_functions(alice, charlie):
    kept = deploy(alice, HANDLER, name="kept")
    deleted = deploy(alice, HANDLER, name="deleted")
    alice.client.delete(f"/api/v1/functions/{deleted['functionId']}/")
    deploy(charlie, HANDLER, name="charlies")
    response = alice.client.get("/api/v1/functions/")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 1
    assert [f["functionId"] for f in body["results"]] == [kept["functionId"]]


def test_the_list_is_paginated(alice):
    for number in range(3):
        deploy(alice, HANDLER, name=f"f{number}")
    page = alice.client.get("/api/v1/functions/?page_size=2").json()
    assert (page["count"], len(page["results"])) == (3, 2)
    assert page["next"]
    second = alice.client.get(page["next"]).json()
    assert len(second["results"]) == 1


def test_it_shows_a_function(alice):
    function = deploy(alice, HANDLER, name="shown")
    for url in (f"/api/v1/functions/{function['functionId']}/", f"/api/v1/functions/{function['functionId']}"):
        response = alice.client.get(url)
        assert response.status_code == 200, url
        assert response.json()["name"] == "shown"


@pytest.mark.parametrize("function_id", ["00000000-0000-0000-0000-000000000000", "not-a-uuid"])
def test_showing_an_unknown_function_is_404(alice, function_id):
    response = alice.client.get(f"/api/v1/functions/{function_id}/")
    assert response.status_code == 404
    assert response.json()["code"] == "function_not_found"


def test_updating_code_makes_a_new_version_and_keeps_the_old_one(alice):
    function = deploy(alice, HANDLER, name="versions")
    response = alice.client.patch(f"/api/v1/functions/{function['functionId']}/",
                                  {"code": "def handler(event, context):\n    return 2\n"}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["version"] == 2
    assert body["sha256"] != function["sha256"]
    assert FunctionVersion.objects.filter(function_id=function["functionId"]).count() == 2


def test_updating_only_settings_keeps_the_version(alice):
    function = deploy(alice, HANDLER, name="settings-only")
    response = alice.client.patch(f"/api/v1/functions/{function['functionId']}/",
                                  {"memoryMb": 96, "timeoutSeconds": 7}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["version"], body["memoryMb"], body["timeoutSeconds"]) == (1, 96, 7)


def test_put_updates_as_well(alice):
    function = deploy(alice, HANDLER, name="put")
    response = alice.client.put(f"/api/v1/functions/{function['functionId']}/", {"code": "x = 1\n"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["version"] == 2


def test_an_update_with_bad_code_changes_nothing(alice):
    function = deploy(alice, HANDLER, name="atomic")
    response = alice.client.patch(f"/api/v1/functions/{function['functionId']}/",
                                  {"code": "def broken(:\n", "memoryMb": 99}, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "syntax_error"
    again = alice.client.get(f"/api/v1/functions/{function['functionId']}/").json()
    assert (again["version"], again["memoryMb"]) == (1, function["memoryMb"])


def test_a_queued_job_keeps_the_version_it_was_submitted_with(alice):
    function = deploy(alice, HANDLER, name="pinned")
    job_id = alice.client.post("/run", {"functionId": function["functionId"]}, format="json",
                               HTTP_X_ASYNC="true").json()["jobId"]
    alice.client.patch(f"/api/v1/functions/{function['functionId']}/", {"code": "x = 2\n"}, format="json")
    assert Job.objects.get(pk=job_id).function_version.number == 1
    assert alice.client.get(f"/status/{job_id}").json()["functionVersion"] == 1


def test_deleting_hides_the_function_but_keeps_its_jobs(alice):
    function = deploy(alice, HANDLER, name="to-delete")
    job_id = alice.client.post("/run", {"functionId": function["functionId"]}, format="json",
                               HTTP_X_ASYNC="true").json()["jobId"]
    response = alice.client.delete(f"/api/v1/functions/{function['functionId']}/")
    assert response.status_code == 204
    assert alice.client.get(f"/api/v1/functions/{function['functionId']}/").status_code == 404
    run = alice.client.post("/run", {"functionId": function["functionId"]}, format="json", HTTP_X_ASYNC="true")
    assert run.status_code == 404
    assert alice.client.get(f"/status/{job_id}").status_code == 200
    # The name is free again.
    deploy(alice, HANDLER, name="to-delete")


def test_deleting_twice_is_404_the_second_time(alice):
    function = deploy(alice, HANDLER)
    assert alice.client.delete(f"/api/v1/functions/{function['functionId']}/").status_code == 204
    assert alice.client.delete(f"/api/v1/functions/{function['functionId']}/").status_code == 404


# --- another user's function -----------------------------------------------------------------------------------

@pytest.fixture
def alices_function(alice):
    return deploy(alice, HANDLER, name="alices")


def test_charlie_cannot_see_alices_function(alices_function, charlie):
    response = charlie.client.get(f"/api/v1/functions/{alices_function['functionId']}/")
    assert response.status_code == 404
    assert response.json()["code"] == "function_not_found"


def test_charlie_does_not_find_alices_function_in_his_list(alices_function, charlie):
    assert charlie.client.get("/api/v1/functions/").json()["count"] == 0


def test_charlie_cannot_run_alices_function(alices_function, charlie):
    for path in ("/run", "/api/v1/jobs/"):
        response = charlie.client.post(path, {"functionId": alices_function["functionId"]}, format="json",
                                       HTTP_X_ASYNC="true")
        assert response.status_code == 404, path
        assert response.json()["code"] == "function_not_found"
    assert Job.objects.count() == 0


def test_charlie_cannot_update_alices_function(alices_function, charlie):
    response = charlie.client.patch(f"/api/v1/functions/{alices_function['functionId']}/",
                                    {"code": "x = 1\n"}, format="json")
    assert response.status_code == 404
    assert Function.objects.get(pk=alices_function["functionId"]).version == 1


def test_charlie_cannot_delete_alices_function(alices_function, charlie):
    response = charlie.client.delete(f"/api/v1/functions/{alices_function['functionId']}/")
    assert response.status_code == 404
    assert Function.objects.get(pk=alices_function["functionId"]).deleted_at is None
