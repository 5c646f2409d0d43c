"""Waiting: for any condition, for a job's status as the API shows it, and how long a warm pool may take."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.support.accounts import Account
from tests.support.containers import ENGINE_CALL_SECONDS
from tests.support.jobs import TERMINAL_STATUSES


def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.1, message: str = "") -> Any:
    """The first truthy value of `predicate()`, asked every `interval` s; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message or predicate}")
        time.sleep(interval)


def pool_ready_timeout(containers: int = 1) -> float:
    """How long a test waits for a warm pool to have `containers` more ready: the pool makes them one after another
    and gives each one's runtime READY_TIMEOUT_SECONDS to reach its FIFO before it counts it as failed, once the
    engine created and started it (ENGINE_CALL_SECONDS). A shorter wait fails a pool that keeps its word."""
    from jobs.sandbox.warm_pool import READY_TIMEOUT_SECONDS

    return containers * (READY_TIMEOUT_SECONDS + ENGINE_CALL_SECONDS)


def wait_for_status(account: Account, job_id: str, *, statuses: tuple[str, ...] = TERMINAL_STATUSES,
                    timeout: float = 60.0) -> dict[str, Any]:
    """The job's /status/ body once its status is one of `statuses`."""
    def done() -> dict[str, Any] | None:
        response = account.client.get(f"/status/{job_id}")
        assert response.status_code == 200, response.content
        body = response.json()
        return body if body["status"] in statuses else None

    return wait_for(done, timeout=timeout, interval=0.2, message=f"job {job_id} to reach {statuses}")
