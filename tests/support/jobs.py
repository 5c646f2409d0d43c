"""Code, functions and jobs: zips, functions deployed through the API, submitted runs, queued Job rows made through
the services, and a job run by the real runner in a thread of the test process."""
from __future__ import annotations

import io
import threading
import uuid
import zipfile
from typing import Any

from tests.support.accounts import Account

TERMINAL_STATUSES = ("succeeded", "failed", "timed_out", "cancelled")


def make_zip(files: dict[str, str | bytes], *, links: dict[str, str] | None = None) -> bytes:
    """A zip of `files` (name -> content); `links` adds symbolic-link members (name -> target)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            archive.writestr(info, target)
    return buffer.getvalue()


def deploy(account: Account, code: str, *, name: str | None = None, memory_mb: int | None = None,
           timeout_seconds: int | None = None, env: dict[str, str] | None = None,
           default_model: str | None = None) -> dict[str, Any]:
    """Deploy `code` (the text of main.py) through the API as `account`; returns the function as the API shows it."""
    body: dict[str, Any] = {"name": name or f"fn-{uuid.uuid4().hex[:8]}", "code": code}
    if memory_mb is not None:
        body["memoryMb"] = memory_mb
    if timeout_seconds is not None:
        body["timeoutSeconds"] = timeout_seconds
    if env is not None:
        body["env"] = env
    if default_model is not None:
        body["defaultModel"] = default_model
    response = account.client.post("/api/v1/functions/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def submit(account: Account, function_id: str, input_data: Any = None, *, model_id: str | None = None,
           asynchronous: bool = True) -> Any:
    """POST /run as `account`; the response as it came (202 with a jobId when asynchronous)."""
    body: dict[str, Any] = {"functionId": function_id, "inputData": input_data}
    if model_id is not None:
        body["modelId"] = model_id
    headers = {"HTTP_X_ASYNC": "true"} if asynchronous else {}
    return account.client.post("/run", body, format="json", **headers)


def make_job(account: Account, code: str, input_data: Any = None, *, model_id: str = "smollm2:135m",
             memory_mb: int | None = None, timeout_seconds: int | None = None, env: dict[str, str] | None = None,
             runtime: str = "python"):
    """A queued Job row made through the services (no broker message): for tests that call the runner directly.
    `code` is the text of main.py, or of index.js for the node `runtime`."""
    from jobs import services

    function = services.deploy_function(
        owner=account.user, name=f"fn-{uuid.uuid4().hex[:8]}", code=code.encode(), memory_mb=memory_mb,
        timeout_seconds=timeout_seconds, env=env, runtime=runtime,
    )
    from models_catalog.services import route_model

    # Not submit_job: nothing is enqueued, the test hands the job to the runner itself. Routed as an admission
    # routes it: the runner's gateway forwards to the node named on the job.
    return services.create_job(
        owner=account.user, function=function, function_version=function.current_version, model_id=model_id,
        node=route_model(model_id).name, queue="jobs", input_data=input_data, memory_mb=function.memory_mb,
        timeout_seconds=function.timeout_seconds,
    )


def run_in_thread(job_id: Any) -> threading.Thread:
    """Run a job with the real runner in a thread of this process (for a test that acts while it runs)."""
    from django.db import connections

    from jobs.runner import run_job

    def target() -> None:
        try:
            run_job(job_id)
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def relay_released_jobs() -> int:
    """What a relay does with jobs a dependency build released: on PostgreSQL (fair share) they are back in the
    outbox, and a relay sends them once their queue has a worker's seat; elsewhere they were sent already. Returns
    how many the relay sent."""
    from jobs.fairness import seats
    from jobs.outbox import dispatch_fairly
    from tests.support.databases import on_postgresql

    if not on_postgresql():
        return 0
    seats.declare("a-worker", {"jobs": 1})
    return dispatch_fairly()
