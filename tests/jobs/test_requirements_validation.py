"""A function's requirements.txt is checked at deploy: only plain requirements of the operator's index pass, and the
set is normalised (so that two spellings of one set share one layer)."""
from __future__ import annotations

import pytest

from jobs.requirements import RequirementsRejected, parse_requirements
from tests.support.jobs import make_zip
from tests.support.layers import deploy_with_requirements

REACHING_ELSEWHERE = [
    "--index-url https://example.org/simple",
    "-i https://example.org/simple",
    "--extra-index-url https://example.org/simple",
    "-f https://example.org/wheels/",
    "--find-links /srv/wheels",
    "-e .",
    "-e git+https://example.org/repo.git#egg=thing",
    "-r other.txt",
    "-c constraints.txt",
    "--trusted-host example.org",
    "git+https://example.org/repo.git",
    "thing @ https://example.org/thing-1.0.tar.gz",
    "https://example.org/thing-1.0-py3-none-any.whl",
    "./vendor/thing",
    "/srv/thing-1.0-py3-none-any.whl",
    "~/thing",
    "thing==1.0 --hash=sha256:0000",
    "thing==${VERSION}",
    "thing==1.0 \\",
    "thing===1.0",
    "not a requirement!",
]


@pytest.mark.parametrize("line", REACHING_ELSEWHERE)
def test_it_refuses_a_line_that_reaches_elsewhere_naming_the_line(line):
    with pytest.raises(RequirementsRejected) as refused:
        parse_requirements(f"six==1.16.0\n# a comment\n{line}\n")
    assert refused.value.code == "invalid_requirements"
    assert refused.value.extra == {"line": 3}
    assert "line 3" in refused.value.detail


def test_it_accepts_names_extras_versions_and_markers_and_normalises_them():
    text = ("# data\nPydantic[Email]>=2.0, <3  # pinned\n\nnumpy==2.1.*\nsix\n"
            "typing_extensions ~= 4.0 ; python_version < '3.12'\nsix\n")
    assert parse_requirements(text).lines == (
        "numpy==2.1.*",
        "pydantic[email]<3,>=2.0",
        "six",
        'typing-extensions~=4.0; python_version < "3.12"',
    )


def test_two_spellings_of_one_set_are_one_set():
    assert parse_requirements("Six==1.16.0\nattrs>=23\n") == parse_requirements("attrs >= 23 # x\nsix == 1.16.0\n")


def test_an_empty_file_means_no_dependencies():
    assert not parse_requirements("# nothing\n\n")


def test_a_deploy_with_an_index_option_is_refused_naming_the_line(alice):
    answer = deploy_with_requirements(alice, "print(1)\n", "six\n--extra-index-url https://example.org/\n",
                                      expect=400)
    assert answer["code"] == "invalid_requirements"
    assert answer["line"] == 2


def test_a_deploy_with_a_git_line_in_the_zip_is_refused(alice):
    code = make_zip({"main.py": "print(1)\n", "requirements.txt": "git+https://example.org/x.git\n"})
    response = alice.client.post("/api/v1/functions/", {"name": "zipped", "codeBase64": _b64(code)}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid_requirements"


def test_the_zip_s_requirements_are_taken_and_the_version_waits_for_its_build(alice):
    code = make_zip({"main.py": "import six\n", "requirements.txt": "six==1.16.0\n"})
    response = alice.client.post("/api/v1/functions/", {"name": "zipped", "codeBase64": _b64(code)}, format="json")
    assert response.status_code == 201, response.content
    dependencies = response.json()["dependencies"]
    assert dependencies["status"] == "building"
    assert dependencies["requirements"] == "six==1.16.0\n"


def test_a_function_without_requirements_shows_no_dependencies(alice):
    response = alice.client.post("/api/v1/functions/", {"name": "plain", "code": "print(1)\n"}, format="json")
    assert response.json()["dependencies"] is None


def test_new_code_keeps_the_requirements_and_an_empty_text_removes_them(alice):
    function = deploy_with_requirements(alice, "print(1)\n", "six==1.16.0\n")
    url = f"/api/v1/functions/{function['functionId']}/"
    changed = alice.client.patch(url, {"code": "print(2)\n"}, format="json").json()
    assert changed["version"] == 2 and changed["dependencies"]["requirements"] == "six==1.16.0\n"
    cleared = alice.client.patch(url, {"requirements": ""}, format="json").json()
    assert cleared["version"] == 3 and cleared["dependencies"] is None


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()
