"""`ainode deploy` of node code: the runtime comes from what the folder or file holds, or from --runtime."""
import json

import pytest

from jobs.models import Function

pytestmark = pytest.mark.django_db(transaction=True)

HANDLER = "exports.handler = (event) => event;\n"


def test_a_folder_with_index_js_deploys_a_node_function(ainode, tmp_path, api):
    project = tmp_path / "hello"
    project.mkdir()
    (project / "index.js").write_text("module.exports.handler = require('./lib').echo;\n")
    (project / "lib.js").write_text("exports.echo = (event) => event;\n")
    (project / "node_modules").mkdir()
    (project / "node_modules" / "left-behind.js").write_text("")
    result = ainode("deploy", str(project), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["runtime"] == "node"
    version = Function.objects.get(owner=api.account.user).current_version
    assert (version.runtime, sorted(version.files)) == ("node", ["index.js", "lib.js"])


def test_a_single_js_file_deploys_as_index_js(ainode, tmp_path, api):
    script = tmp_path / "hello.js"
    script.write_text(HANDLER)
    result = ainode("deploy", str(script))
    assert result.returncode == 0, result.stderr
    version = Function.objects.get(owner=api.account.user).current_version
    assert (version.runtime, version.files) == ("node", ["index.js"])


def test_the_runtime_flag_wins_over_the_folder(ainode, tmp_path, api):
    (tmp_path / "main.py").write_text("def handler(event, context):\n    return event\n")
    (tmp_path / "index.js").write_text(HANDLER)
    assert ainode("deploy", str(tmp_path), "--name", "both").returncode == 0
    assert Function.objects.get(owner=api.account.user).runtime == "python"
    result = ainode("deploy", str(tmp_path), "--name", "both", "--runtime", "node")
    assert result.returncode == 0, result.stderr
    assert Function.objects.get(owner=api.account.user).runtime == "node"


def test_a_node_folder_sends_its_package_json_and_lockfile_and_removing_them_removes_the_dependencies(
        ainode, tmp_path, api):
    from tests.support.layers import IS_NUMBER_LOCK, IS_NUMBER_PACKAGE

    (tmp_path / "index.js").write_text("exports.handler = () => require('is-number')(1);\n")
    (tmp_path / "package.json").write_text(IS_NUMBER_PACKAGE)
    (tmp_path / "package-lock.json").write_text(IS_NUMBER_LOCK)
    result = ainode("deploy", str(tmp_path), "--name", "deps", "--no-wait", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["dependencies"]["status"] == "building"
    version = Function.objects.get(owner=api.account.user).current_version
    assert '"is-number": "7.0.0"' in version.requirements and version.layer.runtime == "node"

    (tmp_path / "package.json").unlink()
    (tmp_path / "package-lock.json").unlink()
    assert ainode("deploy", str(tmp_path), "--name", "deps", "--no-wait").returncode == 0
    version = Function.objects.get(owner=api.account.user).current_version
    assert (version.number, version.requirements, version.layer) == (2, "", None)
