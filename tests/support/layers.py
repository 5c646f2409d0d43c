"""Functions that bring dependencies: deployed through the API with a requirements text, and their layers built by
the real builder (the host's pip, from the real index, and a real sandbox container)."""
from __future__ import annotations

import uuid
from typing import Any

from tests.support.accounts import Account

# Small, real packages with wheels (pure Python), fetched through the machine's pip configuration. pip keeps what
# it fetched in DEPENDENCY_PIP_CACHE_DIR (var/pip-cache), so a second run of the suite fetches nothing again.
SMALL_SET = "six==1.16.0\nattrs==25.3.0\n"
# A real package published only as a source distribution (no wheel): a build must refuse it.
SDIST_ONLY = "docopt==0.6.2\n"


def deploy_with_requirements(account: Account, code: str, requirements: str, *, name: str | None = None,
                             expect: int = 201) -> dict[str, Any]:
    """Deploy `code` (main.py's text) with `requirements` through the API; the answer's body."""
    body = {"name": name or f"fn-{uuid.uuid4().hex[:8]}", "code": code, "requirements": requirements}
    response = account.client.post("/api/v1/functions/", body, format="json")
    assert response.status_code == expect, response.content
    return response.json()


def build_waiting_layers() -> int:
    """Build every layer still waiting for its build, as a worker's task would; returns how many it built."""
    from jobs.models import DependencyLayer, LayerStatus
    from jobs.sandbox.docker_backend import DockerBackend
    from jobs.sandbox.layers import build_layer

    waiting = list(DependencyLayer.objects.filter(status=LayerStatus.BUILDING, build_started_at__isnull=True)
                   .values_list("pk", flat=True))
    for layer_id in waiting:
        build_layer(layer_id, backend=DockerBackend())
    return len(waiting)


def layer_of(function_id: Any) -> Any:
    """The dependency layer of a function's current version."""
    from jobs.models import Function

    return Function.objects.get(pk=function_id).current_version.layer


# Node: a small real package without install scripts, and a tiny real one with a postinstall, each with the
# lockfile `npm install --package-lock-only --ignore-scripts` wrote for it (npm fetches packages with --prefer-offline
# into DEPENDENCY_NPM_CACHE_DIR, var/npm-cache, so a second run of the suite fetches nothing again).
IS_NUMBER_PACKAGE = '{"name": "uses-is-number", "version": "1.0.0", "dependencies": {"is-number": "7.0.0"}}\n'
IS_NUMBER_LOCK = """{
  "name": "uses-is-number", "version": "1.0.0", "lockfileVersion": 3, "requires": true,
  "packages": {
    "": {"name": "uses-is-number", "version": "1.0.0", "dependencies": {"is-number": "7.0.0"}},
    "node_modules/is-number": {
      "version": "7.0.0",
      "resolved": "https://registry.npmjs.org/is-number/-/is-number-7.0.0.tgz",
      "integrity": "sha512-41Cifkg6e8TylSpdtTpeLVMqvSBEVzTttHvERD741+pnZ8ANv0004MRL43QKPDlK9cGvNp6NZWZUBlbGXYxxng==",
      "license": "MIT", "engines": {"node": ">=0.12.0"}
    }
  }
}
"""
# @scarf/scarf 1.4.0: no dependencies, and `"postinstall": "node ./report.js"`.
SCARF_PACKAGE = '{"name": "uses-scarf", "version": "1.0.0", "dependencies": {"@scarf/scarf": "1.4.0"}}\n'
SCARF_LOCK = """{
  "name": "uses-scarf", "version": "1.0.0", "lockfileVersion": 3, "requires": true,
  "packages": {
    "": {"name": "uses-scarf", "version": "1.0.0", "dependencies": {"@scarf/scarf": "1.4.0"}},
    "node_modules/@scarf/scarf": {
      "version": "1.4.0",
      "integrity": "sha512-xxeapPiUXdZAE3che6f3xogoJPeZgig6omHEy1rIY5WVsB3H2BHNnZH+gHG6x91SCWyQCzWGsuL2Hh3ClO5/qQ==",
      "hasInstallScript": true, "license": "Apache-2.0"
    }
  }
}
"""


def deploy_node_with_packages(account: Account, code: str, package_json: str | None, package_lock: str | None, *,
                              expect: int = 201, **files: str) -> dict[str, Any]:
    """Deploy a zip of index.js (`code`), package.json and package-lock.json (each left out when None) and other
    `files` through the API, as `ainode deploy` of a node folder does; the answer's body."""
    import base64

    from tests.support.jobs import make_zip

    members = {"index.js": code, "package.json": package_json, "package-lock.json": package_lock, **files}
    archive = make_zip({name: content for name, content in members.items() if content is not None})
    body = {"name": f"fn-{uuid.uuid4().hex[:8]}", "codeBase64": base64.b64encode(archive).decode()}
    response = account.client.post("/api/v1/functions/", body, format="json")
    assert response.status_code == expect, response.content
    return response.json()
