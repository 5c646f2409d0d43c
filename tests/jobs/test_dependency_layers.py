"""Dependency layers on real parts: wheels fetched by the host's pip from the real index, installed in a real sandbox
container, stored in the database, mounted read-only into a real job container."""
from __future__ import annotations

import hashlib

import pytest

from jobs.models import DependencyLayer, Job, LayerStatus
from jobs.runner import run_job
from tests.support.jobs import relay_released_jobs, submit
from tests.support.layers import SDIST_ONLY, SMALL_SET, build_waiting_layers, deploy_with_requirements, layer_of

pytestmark = pytest.mark.usefixtures("served_models")
# The first build of a set fetches its wheels (then kept in var/pip-cache) and starts two containers.
BUILD_SECONDS = 240

IMPORTS_THE_SET = (
    "import attr, six\n"
    "def handler(event, context):\n"
    "    return {'six': six.__version__, 'attrs': attr.__version__, 'from': six.__file__}\n"
)


def run_submitted(account, function_id: str, input_data=None) -> Job:
    response = submit(account, function_id, input_data)
    assert response.status_code == 202, response.content
    job_id = response.json()["jobId"]
    run_job(job_id)
    return Job.objects.get(pk=job_id)


@pytest.mark.timeout(BUILD_SECONDS)
def test_a_layer_is_built_from_real_wheels_and_a_job_imports_it(alice, job_work_root):
    function = deploy_with_requirements(alice, IMPORTS_THE_SET, SMALL_SET)
    assert function["dependencies"]["status"] == "building"

    assert build_waiting_layers() == 1
    layer = layer_of(function["functionId"])
    assert layer.status == LayerStatus.READY, layer.log
    assert layer.packages == {"six": "1.16.0", "attrs": "25.3.0"}
    assert set(layer.modules) >= {"six", "attr", "attrs"}
    shown = alice.client.get(f"/api/v1/functions/{function['functionId']}/").json()["dependencies"]
    assert shown["status"] == "ready" and shown["layer"] == layer.key

    job = run_submitted(alice, function["functionId"])
    assert job.status == "succeeded", (job.error_code, job.error_message, job.stderr)
    assert job.result == {"six": "1.16.0", "attrs": "25.3.0", "from": "/opt/layer/six.py"}


@pytest.mark.timeout(BUILD_SECONDS)
def test_the_same_set_deployed_twice_is_built_once(alice, bob, job_work_root):
    first = deploy_with_requirements(alice, IMPORTS_THE_SET, SMALL_SET)
    # Another user, the set spelt otherwise (order, case, comments, spaces): the same layer.
    second = deploy_with_requirements(bob, IMPORTS_THE_SET, "# deps\nATTRS == 25.3.0\nsix==1.16.0  # pinned\n")
    assert first["dependencies"]["layer"] == second["dependencies"]["layer"]

    assert build_waiting_layers() == 1
    assert build_waiting_layers() == 0
    third = deploy_with_requirements(alice, IMPORTS_THE_SET, SMALL_SET)
    assert third["dependencies"]["status"] == "ready"
    assert DependencyLayer.objects.count() == 1
    assert run_submitted(bob, second["functionId"]).status == "succeeded"


@pytest.mark.timeout(BUILD_SECONDS)
def test_a_package_without_a_wheel_fails_the_build_and_its_runs(alice, job_work_root):
    function = deploy_with_requirements(alice, "import docopt\n", SDIST_ONLY)
    build_waiting_layers()

    layer = layer_of(function["functionId"])
    assert layer.status == LayerStatus.FAILED
    assert layer.error_code == "dependency_build_failed"
    assert "docopt" in layer.log.splitlines()[-1] and "no wheel" in layer.log
    shown = alice.client.get(f"/api/v1/functions/{function['functionId']}/").json()["dependencies"]
    assert shown["status"] == "failed" and "docopt" in shown["log"]
    response = submit(alice, function["functionId"])
    assert response.status_code == 409
    assert response.json()["code"] == "dependency_build_failed"


@pytest.mark.timeout(BUILD_SECONDS)
def test_a_layer_over_the_size_limit_is_refused(alice, job_work_root, settings):
    # docutils' wheel is about 0.6 MB; installed and compiled it is several: the build's tmpfs fills up.
    settings.DEPENDENCY_LAYER_MAX_MB = 2
    function = deploy_with_requirements(alice, "import docutils\n", "docutils==0.21.2\n")
    build_waiting_layers()

    layer = layer_of(function["functionId"])
    assert layer.status == LayerStatus.FAILED
    assert layer.error_code == "dependency_layer_too_large"
    assert "refused: the installed packages are larger than the layer's size limit" in layer.log


WRITES_TO_ITS_LAYER = (
    "import os, six\n"
    "def attempt(action):\n"
    "    try:\n"
    "        action()\n"
    "        return 'written'\n"
    "    except OSError as exc:\n"
    "        return type(exc).__name__\n"
    "def handler(event, context):\n"
    "    return {\n"
    "        'append': attempt(lambda: open(six.__file__, 'a').write('x = 1\\n')),\n"
    "        'create': attempt(lambda: open('/opt/layer/planted.py', 'w').write('x = 1\\n')),\n"
    "        'remove': attempt(lambda: os.remove(six.__file__)),\n"
    "        'chmod': attempt(lambda: os.chmod('/opt/layer', 0o777)),\n"
    "    }\n"
)


@pytest.mark.timeout(BUILD_SECONDS)
def test_a_running_job_cannot_write_to_its_layer(alice, job_work_root):
    function = deploy_with_requirements(alice, WRITES_TO_ITS_LAYER, SMALL_SET)
    build_waiting_layers()
    job = run_submitted(alice, function["functionId"])
    assert job.status == "succeeded", (job.error_code, job.stderr)
    assert "written" not in job.result.values(), job.result

    # And the layer as the next job gets it is untouched: the same files and bytes as the build made.
    layer = layer_of(function["functionId"])
    folder = next((job_work_root / "layers").glob(f"{layer.pk}-*"))
    assert not (folder / "planted.py").exists()
    assert b"x = 1" not in (folder / "six.py").read_bytes()
    assert hashlib.sha256((folder / "six.py").read_bytes()).hexdigest() == _six_in_the_archive(layer)


def _six_in_the_archive(layer: DependencyLayer) -> str:
    import io
    import tarfile

    data = b"".join(bytes(chunk.data) for chunk in layer.chunks.order_by("index"))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        return hashlib.sha256(archive.extractfile("six.py").read()).hexdigest()


@pytest.mark.timeout(BUILD_SECONDS)
def test_a_warm_container_serves_a_layer_and_has_its_modules_imported_already(alice, job_work_root, warm_pool):
    code = "import sys\ndef handler(event, context):\n    return sorted(m for m in ('six', 'attr') if m in sys.modules)\n"
    function = deploy_with_requirements(alice, code, SMALL_SET)
    build_waiting_layers()
    from jobs.sandbox.layers import local_layer
    from jobs.sandbox.spec import profile_of

    version = layer_of(function["functionId"]).versions.get()
    slot = warm_pool.fill(profile_of(memory_mb=version.function.memory_mb, layer=local_layer(version)))

    job = run_submitted(alice, function["functionId"])
    assert job.status == "succeeded", (job.error_code, job.stderr)
    assert job.container_id == slot.container_id
    # Nothing of the script imported them: the warm runtime did, while it waited.
    assert job.result == ["attr", "six"]


@pytest.mark.timeout(BUILD_SECONDS)
def test_an_async_run_waits_for_the_build_and_then_runs(alice, job_work_root, _isolated_broker):
    from tests.support.brokers import broker_messages

    function = deploy_with_requirements(alice, IMPORTS_THE_SET, SMALL_SET)
    response = submit(alice, function["functionId"])
    assert response.status_code == 202
    job_id = response.json()["jobId"]
    assert not [m for m in broker_messages(_isolated_broker) if m["headers"]["task"] == "jobs.run_job"]

    build_waiting_layers()
    relay_released_jobs()
    sent = [m for m in broker_messages(_isolated_broker) if m["headers"]["task"] == "jobs.run_job"]
    assert [job_id in m["headers"]["argsrepr"] for m in sent] == [True]
    run_job(job_id)
    job = Job.objects.get(pk=job_id)
    assert job.status == "succeeded", (job.error_code, job.stderr)


@pytest.mark.timeout(BUILD_SECONDS)
def test_a_layer_nothing_uses_is_removed_with_its_host_copy(alice, job_work_root, settings):
    from jobs.sandbox.docker_backend import DockerBackend
    from jobs.sandbox.layers import cleanup
    from jobs.services import delete_function, get_function

    settings.DEPENDENCY_LAYER_KEEP_SECONDS = 0
    function = deploy_with_requirements(alice, IMPORTS_THE_SET, SMALL_SET)
    build_waiting_layers()
    assert run_submitted(alice, function["functionId"]).status == "succeeded"
    layer = layer_of(function["functionId"])
    cleanup(DockerBackend())
    assert DependencyLayer.objects.filter(pk=layer.pk).exists()  # the function still uses it

    delete_function(function=get_function(owner=alice.user, function_id=function["functionId"]))
    cleanup(DockerBackend())  # notes it unused
    cleanup(DockerBackend())  # removes it, and this host's copy
    assert not DependencyLayer.objects.filter(pk=layer.pk).exists()
    assert not list((job_work_root / "layers").glob(f"{layer.pk}-*"))


@pytest.mark.timeout(BUILD_SECONDS)
def test_a_numpy_layer_with_compiled_extensions_runs_from_its_read_only_mount(alice, job_work_root):
    code = ("import numpy as np\n"
            "def handler(event, context):\n"
            "    return {'sum': int(np.arange(10).sum()), 'version': np.__version__, 'from': np.__file__}\n")
    function = deploy_with_requirements(alice, code, "numpy==2.3.5\n")
    build_waiting_layers()
    layer = layer_of(function["functionId"])
    assert layer.status == LayerStatus.READY, layer.log
    assert "numpy" in layer.modules

    job = run_submitted(alice, function["functionId"])
    assert job.status == "succeeded", (job.error_code, job.stderr)
    assert job.result == {"sum": 45, "version": "2.3.5", "from": "/opt/layer/numpy/__init__.py"}
