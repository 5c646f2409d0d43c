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
