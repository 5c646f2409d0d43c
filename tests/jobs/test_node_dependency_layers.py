"""Node dependency layers on real parts: a package.json and its lockfile checked at deploy, packages fetched by the
host's npm (scripts never run) from the real registry, copied into the layer in a real sandbox container, and
required by a real node job from the read-only mount."""
from __future__ import annotations

import json

import pytest

from jobs.models import DependencyLayer, Job, LayerStatus
from jobs.runner import run_job
from tests.support.jobs import submit
from tests.support.layers import (
    IS_NUMBER_LOCK,
    IS_NUMBER_PACKAGE,
    SCARF_LOCK,
    SCARF_PACKAGE,
    build_waiting_layers,
    deploy_node_with_packages,
    deploy_with_requirements,
    layer_of,
)

pytestmark = pytest.mark.usefixtures("served_models")
BUILD_SECONDS = 240

REQUIRES_IS_NUMBER = (
    "const isNumber = require('is-number');\n"
    "exports.handler = (event) => ({five: isNumber(5), word: isNumber('five'),\n"
    "                               from: require.resolve('is-number')});\n"
)


def run_submitted(account, function_id: str) -> Job:
    response = submit(account, function_id)
    assert response.status_code == 202, response.content
    run_job(response.json()["jobId"])
    return Job.objects.get(pk=response.json()["jobId"])


@pytest.mark.timeout(BUILD_SECONDS)
def test_a_node_layer_is_built_from_the_registry_and_a_job_requires_it(alice, job_work_root):
    function = deploy_node_with_packages(alice, REQUIRES_IS_NUMBER, IS_NUMBER_PACKAGE, IS_NUMBER_LOCK,
                                         **{".npmrc": "registry=https://evil.example/\n"})
    assert function["runtime"] == "node"
    assert function["dependencies"]["status"] == "building"

    assert build_waiting_layers() == 1
    layer = layer_of(function["functionId"])
    assert layer.status == LayerStatus.READY, layer.log
    assert (layer.runtime, layer.packages, layer.modules) == ("node", {"is-number": "7.0.0"}, ["is-number"])
    assert "evil.example" not in layer.log

    job = run_submitted(alice, function["functionId"])
    assert job.status == "succeeded", (job.error_code, job.error_message, job.stderr)
    assert job.result == {"five": True, "word": False, "from": "/opt/layer/node_modules/is-number/index.js"}


@pytest.mark.timeout(BUILD_SECONDS)
def test_the_same_packages_deployed_twice_are_built_once_and_never_share_a_python_layer(alice, bob, job_work_root):
    first = deploy_node_with_packages(alice, REQUIRES_IS_NUMBER, IS_NUMBER_PACKAGE, IS_NUMBER_LOCK)
    # Another user, another project name and spelling of the same files: the same layer.
    renamed = json.loads(IS_NUMBER_LOCK)
    renamed["name"] = renamed["packages"][""]["name"] = "something-else"
    second = deploy_node_with_packages(bob, REQUIRES_IS_NUMBER,
                                       IS_NUMBER_PACKAGE.replace("uses-is-number", "something-else"),
                                       json.dumps(renamed))
    assert first["dependencies"]["layer"] == second["dependencies"]["layer"]

    assert build_waiting_layers() == 1
    assert build_waiting_layers() == 0
    third = deploy_node_with_packages(alice, REQUIRES_IS_NUMBER, IS_NUMBER_PACKAGE, IS_NUMBER_LOCK)
    assert third["dependencies"]["status"] == "ready"
    assert DependencyLayer.objects.count() == 1
    assert run_submitted(bob, second["functionId"]).status == "succeeded"


@pytest.mark.timeout(BUILD_SECONDS)
def test_a_package_with_an_install_script_fails_the_build_naming_it(alice, job_work_root):
    function = deploy_node_with_packages(alice, "require('@scarf/scarf');\n", SCARF_PACKAGE, SCARF_LOCK)
    build_waiting_layers()

    layer = layer_of(function["functionId"])
    assert (layer.status, layer.error_code) == (LayerStatus.FAILED, "dependency_build_failed")
    assert "@scarf/scarf@1.4.0 needs an install script" in layer.log.splitlines()[-1]
    response = submit(alice, function["functionId"])
    assert (response.status_code, response.json()["code"]) == (409, "dependency_build_failed")


@pytest.mark.timeout(BUILD_SECONDS)
def test_a_lockfile_that_hides_an_install_script_is_caught_in_the_sandbox(alice, job_work_root):
    hidden = json.loads(SCARF_LOCK)
    del hidden["packages"]["node_modules/@scarf/scarf"]["hasInstallScript"]
    function = deploy_node_with_packages(alice, "require('@scarf/scarf');\n", SCARF_PACKAGE, json.dumps(hidden))
    build_waiting_layers()

    layer = layer_of(function["functionId"])
    assert (layer.status, layer.error_code) == (LayerStatus.FAILED, "dependency_build_failed")
    assert "@scarf/scarf@1.4.0 needs an install script (postinstall)" in layer.log.splitlines()[-1]


@pytest.mark.parametrize("spec", ["git+https://github.com/jonschlinkert/is-number.git", "file:../is-number",
                                  "link:../is-number", "github:jonschlinkert/is-number", "jonschlinkert/is-number",
                                  "https://example.com/is-number-7.0.0.tgz"])
def test_a_dependency_from_outside_the_registry_is_refused_at_deploy(alice, spec):
    package = json.dumps({"name": "x", "dependencies": {"is-number": spec}})
    lock = json.loads(IS_NUMBER_LOCK)
    lock["packages"][""]["dependencies"]["is-number"] = spec
    answer = deploy_node_with_packages(alice, REQUIRES_IS_NUMBER, package, json.dumps(lock), expect=400)
    assert answer["code"] == "invalid_dependencies"
    assert "package.json dependencies.is-number" in answer["detail"]
    assert not DependencyLayer.objects.exists()


@pytest.mark.parametrize("resolved", ["git+ssh://git@github.com/jonschlinkert/is-number.git#98e8ff1",
                                      "file:../is-number-7.0.0.tgz",
                                      "https://registry.yarnpkg.com/is-number/-/is-number-7.0.0.tgz",
                                      "https://registry.npmjs.org.evil.example/is-number/-/is-number-7.0.0.tgz"])
def test_a_lockfile_resolving_outside_the_registry_is_refused_at_deploy(alice, resolved):
    lock = json.loads(IS_NUMBER_LOCK)
    lock["packages"]["node_modules/is-number"]["resolved"] = resolved
    answer = deploy_node_with_packages(alice, REQUIRES_IS_NUMBER, IS_NUMBER_PACKAGE, json.dumps(lock), expect=400)
    assert answer["code"] == "invalid_dependencies"
    assert "package-lock.json packages['node_modules/is-number'].resolved" in answer["detail"]


def test_a_package_json_without_its_lockfile_is_refused_at_deploy(alice):
    answer = deploy_node_with_packages(alice, REQUIRES_IS_NUMBER, IS_NUMBER_PACKAGE, None, expect=400)
    assert answer["code"] == "invalid_dependencies"
    assert "package-lock.json is required" in answer["detail"]


def test_a_linked_lockfile_entry_is_refused_at_deploy(alice):
    lock = json.loads(IS_NUMBER_LOCK)
    lock["packages"]["node_modules/is-number"] = {"resolved": "../is-number", "link": True}
    answer = deploy_node_with_packages(alice, REQUIRES_IS_NUMBER, IS_NUMBER_PACKAGE, json.dumps(lock), expect=400)
    assert answer["code"] == "invalid_dependencies"


def test_requirements_are_refused_for_a_node_function(alice):
    answer = deploy_with_requirements(alice, "print(1)\n", "six==1.16.0\n", expect=201)
    assert answer["runtime"] == "python"
    response = alice.client.patch(f"/api/v1/functions/{answer['functionId']}/",
                                  {"code": "exports.handler = () => 1;\n", "runtime": "node",
                                   "requirements": "six==1.16.0\n"}, format="json")
    assert (response.status_code, response.json()["code"]) == (400, "invalid_dependencies")


WRITES_TO_ITS_LAYER = (
    "const fs = require('fs');\n"
    "const file = require.resolve('is-number');\n"
    "const attempt = (action) => { try { action(); return 'written'; } catch (err) { return err.code; } };\n"
    "exports.handler = () => ({\n"
    "  append: attempt(() => fs.appendFileSync(file, 'module.exports = () => true;\\n')),\n"
    "  create: attempt(() => fs.writeFileSync('/opt/layer/node_modules/planted.js', 'x')),\n"
    "  remove: attempt(() => fs.unlinkSync(file)),\n"
    "  chmod: attempt(() => fs.chmodSync('/opt/layer', 0o777)),\n"
    "});\n"
)


@pytest.mark.timeout(BUILD_SECONDS)
def test_a_running_node_job_cannot_write_to_its_layer(alice, job_work_root):
    function = deploy_node_with_packages(alice, WRITES_TO_ITS_LAYER, IS_NUMBER_PACKAGE, IS_NUMBER_LOCK)
    build_waiting_layers()
    job = run_submitted(alice, function["functionId"])
    assert job.status == "succeeded", (job.error_code, job.stderr)
    assert "written" not in job.result.values(), job.result

    layer = layer_of(function["functionId"])
    folder = next((job_work_root / "layers").glob(f"{layer.pk}-*"))
    assert not (folder / "node_modules" / "planted.js").exists()
    assert b"() => true" not in (folder / "node_modules" / "is-number" / "index.js").read_bytes()


@pytest.mark.timeout(BUILD_SECONDS)
def test_a_warm_node_container_serves_a_layer_with_its_packages_loaded_already(alice, job_work_root, warm_pool):
    from jobs.sandbox.layers import local_layer
    from jobs.sandbox.spec import profile_of

    code = "exports.handler = () => Object.keys(require.cache).filter((path) => path.includes('/is-number/'));\n"
    function = deploy_node_with_packages(alice, code, IS_NUMBER_PACKAGE, IS_NUMBER_LOCK)
    build_waiting_layers()
    version = layer_of(function["functionId"]).versions.get()
    slot = warm_pool.fill(profile_of(memory_mb=version.function.memory_mb, layer=local_layer(version),
                                     runtime="node"))

    job = run_submitted(alice, function["functionId"])
    assert job.status == "succeeded", (job.error_code, job.stderr)
    assert job.container_id == slot.container_id
    # Nothing of the script required it: the warm runtime did, while it waited.
    assert job.result == ["/opt/layer/node_modules/is-number/index.js"]
