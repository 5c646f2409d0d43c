"""The suite's plugins, and the `slow` tier.

Fixtures live in the modules registered below, helpers that tests call in the modules of tests/support/. Nothing
mocks Docker, the broker, the database or the model.
"""
from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.reporting",
    "tests.fixtures.database",
    "tests.fixtures.accounts",
    "tests.fixtures.brokers",
    "tests.fixtures.workers",
    "tests.fixtures.containers",
    "tests.fixtures.results",
    "tests.fixtures.browser",
    "tests.fixtures.warm",
    "tests.fixtures.ai_node",
    "tests.fixtures.web",
    "tests.fixtures.receivers",
]

# A test that uses any of these needs a real outside part that is slow to use: the Docker engine (a job run in a
# container), a Celery worker process, moto_server's SQS or the real model. It is marked `slow`, so that
# `-m "not slow"` is the fast loop; the full run still runs it.
SLOW_FIXTURES = frozenset({
    "docker_client", "job_work_root",          # Docker
    "warm_pool", "execution",                  # warm containers (Docker)
    "worker", "running_worker",                # a Celery worker
    "moto_endpoint",                           # SQS
    "ai_node", "real_node",                    # the model
    "browser",                                 # Chromium
    "stack",                                   # scripts/stack.sh: the web server and a worker
    "gunicorn", "app_image", "deployment",     # the production web server, the application image
    "platform",                                # two GPU hosts as network namespaces
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
