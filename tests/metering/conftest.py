"""Fixtures for the metering tests: the real AI node behind a recording proxy (tests/metering/helpers.py), and real
jobs run in-process.

Jobs are real: deployed and submitted through `jobs.services`, run by `jobs.runner.run_job` in this process, in
a real container of the runtime image. The gateway writes ledger rows from its own threads, so every test here
uses `transactional_db`.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fixtures.ai_node import AINode
from tests.metering.helpers import KINDS, RecordingProxy, use_node

# --- the node -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def real_node(request: pytest.FixtureRequest) -> AINode:
    """The real local node: the one already running on 8090 / 11435 when it answers, else one started for us."""
    saved = {name: os.environ.get(name) for name in ("AI_NODE_URL", "AI_NODE_OLLAMA_URL")}
    os.environ.setdefault("AI_NODE_URL", "http://127.0.0.1:8090")
    os.environ.setdefault("AI_NODE_OLLAMA_URL", "http://127.0.0.1:11435")
    try:
        return request.getfixturevalue("ai_node")
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def node(transactional_db, settings: Any, real_node: AINode) -> Iterator[RecordingProxy]:
    """The real node as an OpenAI-compatible server (llama.cpp), recorded."""
    proxy = use_node(settings, real_node, "openai")
    yield proxy
    proxy.stop()


@pytest.fixture(params=KINDS)
def each_node(request: pytest.FixtureRequest, transactional_db, settings: Any, real_node: AINode) -> Iterator[RecordingProxy]:
    """The real node once as kind openai (llama.cpp) and once as kind ollama (the Ollama front), recorded."""
    proxy = use_node(settings, real_node, request.param)
    yield proxy
    proxy.stop()


@pytest.fixture(params=KINDS)
def node_without_counts(request: pytest.FixtureRequest, transactional_db, settings: Any,
                        real_node: AINode) -> Iterator[RecordingProxy]:
    """The real node (as each kind), but its answers reach the gateway with their token counts removed."""
    proxy = use_node(settings, real_node, request.param, strip_usage=True)
    yield proxy
    proxy.stop()


@pytest.fixture
def model_id(real_node: AINode) -> str:
    return real_node.model_id


# --- jobs ---------------------------------------------------------------------------------------------------------

@pytest.fixture
def run_script(transactional_db, job_work_root, alice, model_id: str) -> Callable[..., Any]:
    """Deploy `code` as alice's function, submit a job of it, run it in a real container; the Job row after.

    Keywords: input_data, job_budget (the job's tokenBudget), function_budget, allowed_models, model, memory_mb,
    timeout_seconds, runtime (`node`: `code` is the text of index.js).
    """
    from jobs import services
    from jobs.models import Job
    from jobs.runner import run_job

    def run(code: str, *, input_data: Any = None, job_budget: int | None = None, function_budget: int | None = None,
            allowed_models: list[str] | None = None, model: str | None = None, memory_mb: int | None = None,
            timeout_seconds: int = 90, runtime: str = "python") -> Job:
        function = services.deploy_function(
            owner=alice.user, name=f"metered-{uuid.uuid4().hex[:8]}", code=code.encode(), memory_mb=memory_mb,
            timeout_seconds=timeout_seconds, allowed_models=allowed_models, token_budget=function_budget,
            runtime=runtime,
        )
        job = services.submit_job(owner=alice.user, function=function, model_id=model or model_id,
                                  input_data=input_data, token_budget=job_budget)
        run_job(job.pk)
        return Job.objects.get(pk=job.pk)

    return run
