"""An admission (POST /run) reads its API key, function and model route from cached look-ups (core.lookups) and runs
at most four statements; what it caches is forgotten, in every process, as soon as a key is revoked, a quota, a
function or the catalogue changes, and it works without the shared cache."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import Quota
from jobs.models import Job
from tests.support.jobs import deploy, submit
from tests.support.workers import database_url

HANDLER = "def handler(event, context):\n    return event\n"
MODEL = "model-a"
TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE SAVEPOINT")
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def function(alice, served_models) -> dict:
    return deploy(alice, HANDLER, name="echo")


def admit(account, function) -> list[str]:
    """The statements of one asynchronous run of `function` (the request must be admitted)."""
    with CaptureQueriesContext(connection) as queries:
        response = submit(account, function["functionId"], {"n": 1}, model_id=MODEL)
    assert response.status_code == 202, response.content
    return [query["sql"] for query in queries.captured_queries]


def data_statements(statements: list[str]) -> list[str]:
    return [sql for sql in statements if not sql.upper().startswith(TRANSACTION_CONTROL)]


@pytest.mark.django_db(transaction=True)  # as in production: the admission's transaction is the outermost
def test_an_admission_runs_at_most_four_statements(alice, function):
    admit(alice, function)  # the first one fills the look-ups
    statements = admit(alice, function)
    assert len(data_statements(statements)) <= 4, statements
    assert not [sql for sql in statements if "SAVEPOINT" in sql.upper()], statements


def test_a_known_key_function_and_route_are_not_read_again(alice, function):
    admit(alice, function)
    tables = " ".join(admit(alice, function))
    for table in ("accounts_apikey", "auth_user", "jobs_function", "models_catalog_modelcatalog"):
        assert f'FROM "{table}"' not in tables, table


def test_a_revoked_key_is_refused_at_once(alice, function):
    from accounts.services import revoke_api_key

    admit(alice, function)
    revoke_api_key(api_key=alice.user.api_keys.get())
    response = submit(alice, function["functionId"], model_id=MODEL)
    assert response.status_code == 401
    assert response.json()["code"] == "bad_api_key"


def test_a_deactivated_user_is_refused_at_once(alice, function):
    admit(alice, function)
    alice.user.is_active = False
    alice.user.save()
    assert submit(alice, function["functionId"], model_id=MODEL).status_code == 401


def test_a_quota_given_after_the_key_was_cached_applies_to_the_next_run(alice, function):
    admit(alice, function)
    Quota.objects.create(user=alice.user, max_concurrent_jobs=1)  # counts the jobs admitted under it
    admit(alice, function)
    response = submit(alice, function["functionId"], model_id=MODEL)
    assert response.status_code == 429
    assert response.json()["code"] == "too_many_jobs"


def test_a_new_version_of_a_function_runs_at_once(alice, function):
    admit(alice, function)
    response = alice.client.patch(f"/api/v1/functions/{function['functionId']}/",
                                  {"code": "def handler(event, context):\n    return 2\n"}, format="json")
    assert response.status_code == 200, response.content
    job_id = submit(alice, function["functionId"], model_id=MODEL).json()["jobId"]
    assert Job.objects.get(pk=job_id).function_version.number == 2


def test_a_deleted_function_is_not_found_at_once(alice, function):
    admit(alice, function)
    assert alice.client.delete(f"/api/v1/functions/{function['functionId']}/").status_code == 204
    response = submit(alice, function["functionId"], model_id=MODEL)
    assert response.status_code == 404
    assert response.json()["code"] == "function_not_found"


def test_a_disabled_model_is_refused_at_once(alice, function):
    from models_catalog.models import ModelCatalog
    from models_catalog.services import set_models_enabled

    admit(alice, function)
    set_models_enabled(models=ModelCatalog.objects.filter(model_id=MODEL), enabled=False)
    response = submit(alice, function["functionId"], model_id=MODEL)
    assert response.status_code == 400
    assert response.json()["code"] == "unknown_model"


def test_admissions_work_when_the_shared_cache_is_down(alice, function, settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": "redis://127.0.0.1:1/0"}}  # nothing listens on port 1
    admit(alice, function)
    assert len(data_statements(admit(alice, function))) > 4  # nothing cached: every look-up reads the database


def in_another_process(code: str) -> None:
    """Run `code` in a new Django process on this test's database and cache, as the admin or a worker would."""
    env = {**os.environ, "DATABASE_URL": database_url(), "DJANGO_SETTINGS_MODULE": "infra_ainode.settings"}
    subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=REPO_ROOT, env=env, check=True,
                   capture_output=True, timeout=60)


@pytest.mark.django_db(transaction=True)
def test_a_key_revoked_in_another_process_is_refused_at_the_next_request(alice, function):
    admit(alice, function)
    in_another_process(
        "from accounts.models import ApiKey; from accounts.services import revoke_api_key\n"
        f"revoke_api_key(api_key=ApiKey.objects.get(user__username='{alice.user.username}'))\n"
    )
    assert submit(alice, function["functionId"], model_id=MODEL).status_code == 401


@pytest.mark.django_db(transaction=True)
def test_a_model_disabled_in_another_process_is_refused_at_the_next_request(alice, function):
    admit(alice, function)
    in_another_process(
        "from models_catalog.models import ModelCatalog; from models_catalog.services import set_models_enabled\n"
        f"set_models_enabled(models=ModelCatalog.objects.filter(model_id='{MODEL}'), enabled=False)\n"
    )
    assert submit(alice, function["functionId"], model_id=MODEL).json()["code"] == "unknown_model"


def stored(model, pk) -> dict:
    """The row of `model` with primary key `pk` as the database holds it, by column, without its key."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {connection.ops.quote_name(model._meta.db_table)} WHERE id = %s",
                       [model._meta.pk.get_db_prep_value(pk, connection)])
        row = dict(zip([column[0] for column in cursor.description], cursor.fetchone()))
    del row["id"]
    return row


def test_a_job_and_its_event_are_stored_as_the_orm_stores_them(alice, function):
    """Admission writes its rows with core.inserts.insert, a statement made once per model: each row must hold
    exactly what Model.objects.create would have stored, JSON (with a JSON null inside), SQL NULLs, defaults and
    the decimal cost included."""
    from core.inserts import insert
    from jobs.models import Function, JobEvent

    owner = Function.objects.get(pk=function["functionId"])
    fields = {"owner": alice.user, "function": owner, "function_version": owner.versions.get(), "model_id": MODEL,
              "node": "node-1", "queue": "jobs", "input_data": {"text": "é\n", "list": [1, None, 2.5]},
              "memory_mb": 256, "timeout_seconds": 30, "token_budget": None}
    inserted, created = Job(**fields), Job.objects.create(**fields)
    insert(inserted)
    assert not inserted._state.adding
    assert stored(Job, inserted.pk) | {"created_at": None} == stored(Job, created.pk) | {"created_at": None}
    assert Job.objects.get(pk=inserted.pk).input_data == fields["input_data"]
    event = {"kind": "status", "data": {"status": "queued", "at": None}, "seq": 1, "created_at": created.created_at}
    insert(JobEvent(job=inserted, **event))
    JobEvent.objects.create(job=created, **event)
    assert ({key: value for key, value in stored(JobEvent, inserted.events.get().pk).items() if key != "job_id"}
            == {key: value for key, value in stored(JobEvent, created.events.get().pk).items() if key != "job_id"})
