"""Production settings: the documented production environment passes `manage.py check --deploy`, and unsafe ones
refuse to start."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.service.ops_helpers import PRODUCTION_ENV
from tests.support import REPO_ROOT


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {key: value for key, value in os.environ.items()
            if key not in ("ENVIRONMENT", "SECRET_KEY", "DEBUG", "LOG_FORMAT", "JOB_DISPATCH", "RECEIPT_SIGNING_KEY",
                           "RECEIPT_SIGNING_KEY_FILE")}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=REPO_ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=60)


def settings_value(name: str, **env: str) -> object:
    code = f"import json; from django.conf import settings; print(json.dumps(settings.{name}))"
    run = manage("shell", "-c", code, **env)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_documented_production_environment_passes_check_deploy():
    run = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION_ENV)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no issues" in run.stdout


def test_the_development_default_fails_check_deploy_with_the_warnings_it_should():
    run = manage("check", "--deploy", "--fail-level", "WARNING")
    assert run.returncode != 0
    for warning in ("W004", "W008", "W009", "W012", "W016"):
        assert f"security.{warning}" in run.stdout + run.stderr


@pytest.mark.parametrize("secret_key", [None, "", "short", "dev-only-insecure-secret-key-change-me",
                                        "django-insecure-" + "x" * 60, "a" * 60])
def test_production_refuses_to_start_without_a_real_secret_key(secret_key):
    env = {**PRODUCTION_ENV}
    if secret_key is None:
        env.pop("SECRET_KEY")
    else:
        env["SECRET_KEY"] = secret_key
    run = manage("check", **env)
    assert run.returncode != 0
    assert "ImproperlyConfigured" in run.stderr and "SECRET_KEY" in run.stderr


@pytest.mark.parametrize("missing", [{}, {"RECEIPT_SIGNING_KEY_FILE": "/nonexistent/receipt-key"}])
def test_production_refuses_to_start_without_a_receipt_signing_key(missing):
    env = {key: value for key, value in PRODUCTION_ENV.items() if key != "RECEIPT_SIGNING_KEY"}
    run = manage("check", **env, **missing)
    assert run.returncode != 0
    assert "ImproperlyConfigured" in run.stderr and "RECEIPT_SIGNING_KEY" in run.stderr


def test_production_takes_its_receipt_signing_key_from_a_file(tmp_path):
    key_file = tmp_path / "receipt-key"
    key_file.write_text(PRODUCTION_ENV["RECEIPT_SIGNING_KEY"])
    env = {key: value for key, value in PRODUCTION_ENV.items() if key != "RECEIPT_SIGNING_KEY"}
    code = "from billing.receipt_keys import signing_key; print(signing_key().key_id)"
    run = manage("shell", "-c", code, **env, RECEIPT_SIGNING_KEY_FILE=str(key_file))
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.strip().splitlines()[-1]) == 16


def test_production_refuses_debug():
    run = manage("check", **PRODUCTION_ENV, DEBUG="true")
    assert run.returncode != 0 and "DEBUG must be false" in run.stderr


def test_an_unknown_environment_is_refused():
    run = manage("check", ENVIRONMENT="staging")
    assert run.returncode != 0 and "ENVIRONMENT must be" in run.stderr


def test_the_proxy_header_is_read_from_the_environment():
    assert settings_value("SECURE_PROXY_SSL_HEADER", **PRODUCTION_ENV) == ["HTTP_X_FORWARDED_PROTO", "https"]
    run = manage("check", **{**PRODUCTION_ENV, "SECURE_PROXY_SSL_HEADER": "https"})
    assert run.returncode != 0 and "SECURE_PROXY_SSL_HEADER" in run.stderr


def test_production_turns_on_secure_cookies_hsts_and_the_redirect_each_of_which_can_be_turned_off():
    assert settings_value("SESSION_COOKIE_SECURE", **PRODUCTION_ENV) is True
    assert settings_value("SECURE_HSTS_SECONDS", **PRODUCTION_ENV) == 31536000
    assert settings_value("SECURE_SSL_REDIRECT", **PRODUCTION_ENV, SECURE_SSL_REDIRECT="false") is False
    assert settings_value("CSRF_TRUSTED_ORIGINS", **PRODUCTION_ENV) == ["https://api.example.org"]


def test_log_format_json_writes_one_json_object_per_line():
    code = ("import logging; logging.getLogger('jobs.runner').warning('job %s: lost', 'j-1', extra={'job_id': 'j-1'});"
            "\ntry:\n    1/0\nexcept ZeroDivisionError:\n    logging.getLogger('x').exception('boom')")
    run = manage("shell", "-c", code, LOG_FORMAT="json")
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    assert len(lines) == 2, run.stderr
    assert lines[0]["level"] == "WARNING" and lines[0]["logger"] == "jobs.runner"
    assert lines[0]["message"] == "job j-1: lost" and lines[0]["job_id"] == "j-1"
    assert "ZeroDivisionError" in lines[1]["exception"]


def test_a_weak_password_is_refused_by_the_validators(db):
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        validate_password("password123")
    validate_password("a correct horse battery staple")


def test_an_unknown_dispatch_mode_is_refused():
    run = manage("check", JOB_DISPATCH="later")
    assert run.returncode != 0 and "JOB_DISPATCH must be direct or outbox" in run.stderr


def test_jobs_go_through_the_outbox_by_default_on_postgresql_and_directly_on_sqlite(tmp_path):
    # Settings only: neither database is connected to.
    assert settings_value("JOB_DISPATCH", DATABASE_URL="postgres://u@127.0.0.1:5432/x") == "outbox"
    assert settings_value("JOB_DISPATCH", DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3") == "direct"


def test_the_outbox_is_refused_without_postgresql(tmp_path):
    run = manage("check", JOB_DISPATCH="outbox", DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3")
    assert run.returncode != 0 and "JOB_DISPATCH=outbox needs PostgreSQL" in run.stderr
