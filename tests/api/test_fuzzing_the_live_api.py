"""Schemathesis against the live API, on every operation of its own schema: examples, coverage, fuzzing, and
stateful runs along the schema's links (deploy -> run -> status, cancel). No answer may be a 5xx, break the schema
(status, content type, headers, body), accept a request the schema forbids, or ignore a missing key.

Every check runs, `positive_data_acceptance` included: a schema-valid request must not be refused with a 400 or a
422 wherever the schema can say what the server enforces (an Idempotency-Key's characters, base64, a modelId's
form). Where it cannot (SCHEMATHESIS_CONFIG: code that does not compile, a model that no node serves now, a quota,
a key reused with another body, a date range longer than the longest allowed, a cursor a list did not give, an
address or a cron expression not allowed), those operations may also answer 400, 402 or 422; nowhere else.

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

from tests.support import VENV_BIN

SCHEMATHESIS = VENV_BIN / "st"
# The operations whose schema-valid requests the API may still refuse for a rule no schema states.
SCHEMATHESIS_CONFIG = """
# Submits and deploys: code that does not compile, a model no node serves now, a quota's limit (400, 402), and an
# Idempotency-Key reused with another body (422: a rule about an earlier request).
[[operations]]
include-path-regex = "^/(deploy|run|api/v1/functions/.*)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "402", "403", "404", "409", "422",
                                                     "429"]

[[operations]]
include-path = "/api/v1/jobs/"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "402", "403", "404", "409", "422",
                                                     "429"]

# Webhooks and schedules: a URL at an address the operator does not allow, a cron expression's fields, cron or
# interval (400).
[[operations]]
include-path-regex = "^/api/v1/(webhooks|schedules)/"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429"]

# Receipts' lists: a cursor this list did not give (400: a cursor is opaque, no schema can tell a good one).
[[operations]]
include-path-regex = "receipts/$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429"]

# Usage over a date range: a range longer than the longest allowed (400).
[[operations]]
include-path-regex = "^/api/v1/usage/"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429"]
"""
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

    (tmp_path / "schemathesis.toml").write_text(SCHEMATHESIS_CONFIG)
    command = [
        str(SCHEMATHESIS), "run", f"{live_server.url}/api/schema/",
        "--header", f"Authorization: Bearer {alice.key}",
        "--checks", "all",
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
