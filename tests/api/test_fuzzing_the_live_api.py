"""Schemathesis against the live API, on every operation of its own schema: examples, coverage, fuzzing, and
stateful runs along the schema's links (deploy -> run -> status, cancel). No answer may be a 5xx, break the schema
(status, content type, headers, body), accept a request the schema forbids, or ignore a missing key.

Left out: `positive_data_acceptance`, which would require every schema-valid request to succeed, whereas the API
rightly refuses some for rules a schema cannot state (`from` after `to`, code that does not compile, a function
id that is not yours, a model that no node serves).

A real server (pytest-django's live server, in its own thread) with a user who has an API key and a quota, a
catalogue synced from the local AI node, and no worker: jobs stay queued, and a synchronous run answers 202 after
a short wait. FUZZ_MAX_EXAMPLES (default 10 per operation and phase) bounds the run: about 100 s here, 1,600 test
cases; FUZZ_SEED picks the seed (default 1, so that CI is repeatable).
"""
import os
import re
import subprocess
from decimal import Decimal

import pytest

from tests.helpers import VENV_BIN

SCHEMATHESIS = VENV_BIN / "st"
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "10"))
SEED = os.environ.get("FUZZ_SEED", "1")
MAX_SECONDS = 420


@pytest.mark.slow  # minutes of generated requests against a live server
@pytest.mark.timeout(MAX_SECONDS + 60)
@pytest.mark.django_db(transaction=True)
def test_schemathesis_finds_no_failure_on_any_operation(live_server, alice, settings, tmp_path):
    from accounts.models import Quota
    from billing.models import ModelPrice
    from models_catalog.services import sync_catalogue

    settings.RUN_SYNC_TIMEOUT = 0.2
    sync_catalogue(timeout_ms=5_000)
    ModelPrice.objects.create(model_id=settings.DEFAULT_MODEL_ID, price_per_1k_prompt=Decimal("0.5"),
                              price_per_1k_completion=Decimal("1"))
    # Generous, but set: admissions run the quota's code path, and the big budgets it generates are refused (402).
    Quota.objects.create(user=alice.user, requests_per_minute=100_000, max_concurrent_jobs=100_000,
                         monthly_tokens=10**9, monthly_cost=Decimal("100"))

    command = [
        str(SCHEMATHESIS), "run", f"{live_server.url}/api/schema/",
        "--header", f"Authorization: Bearer {alice.key}",
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--max-examples", str(MAX_EXAMPLES), "--workers", "1", "--seed", SEED,
        "--generation-database", "none", "--request-timeout", "30", "--no-color",
        "--report", "junit", "--report-dir", str(tmp_path / "report"),
    ]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=MAX_SECONDS)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-20_000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", output)
    tested = re.search(r"Tested: (\d+)", output)
    assert selected and tested, output[-5_000:]
    assert selected[1] == selected[2] == tested[1], output[-5_000:]  # every operation of the schema was tested
    # It did reach past the gate: functions were deployed and jobs made along the links.
    from jobs.models import Function, Job

    assert Function.objects.filter(owner=alice.user).exists(), output[-5_000:]
    assert Job.objects.filter(owner=alice.user).exists(), output[-5_000:]
