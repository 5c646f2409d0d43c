"""`ainode deploy` of a folder with a requirements.txt: it waits for the dependencies' build, and prints the build's
log when it fails. The build is the real one (the host's pip, a sandbox container), run here as a worker would."""
import subprocess
import sys

import pytest

from jobs.models import DependencyLayer
from tests.support import REPO_ROOT
from tests.support.layers import SDIST_ONLY, build_waiting_layers
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(240)


def deploy_while_a_worker_builds(api, folder) -> subprocess.CompletedProcess:
    """`ainode deploy FOLDER`, with the layer built (in this process) once the deploy has asked for it."""
    import os

    environment = {**os.environ, "AINODE_URL": api.url, "AINODE_API_KEY": api.key}
    deploying = subprocess.Popen([sys.executable, "-m", "ainode_cli", "deploy", str(folder)], cwd=REPO_ROOT,
                                 env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(DependencyLayer.objects.exists, timeout=60, message="the deploy's layer")
    build_waiting_layers()
    stdout, stderr = deploying.communicate(timeout=60)
    return subprocess.CompletedProcess(deploying.args, deploying.returncode, stdout, stderr)


@pytest.fixture
def folder(tmp_path):
    project = tmp_path / "with-deps"
    project.mkdir()
    (project / "main.py").write_text("import six\n\ndef handler(event, context):\n    return six.__version__\n")
    return project


def test_deploy_waits_for_the_dependencies_and_shows_them(api, folder, job_work_root):
    (folder / "requirements.txt").write_text("six==1.16.0\n")
    result = deploy_while_a_worker_builds(api, folder)
    assert result.returncode == 0, result.stderr
    assert "building the dependencies of with-deps" in result.stderr
    assert "dependencies: ready (1 packages" in result.stdout


def test_deploy_prints_the_build_log_and_exits_3_when_the_build_fails(api, folder, job_work_root):
    (folder / "requirements.txt").write_text(SDIST_ONLY)
    result = deploy_while_a_worker_builds(api, folder)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "the dependencies failed to build (dependency_build_failed)" in result.stderr
    assert "No matching distribution found for docopt==0.6.2" in result.stderr
