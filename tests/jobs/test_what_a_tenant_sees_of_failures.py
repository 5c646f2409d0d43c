"""What a job's failure tells its owner is theirs to know, and no more: text any database can store in place of a
result holding lone surrogates (PostgreSQL refuses them), and no broker's or database's own words (host paths, SQL)
in errorMessage."""
import pytest

from jobs import dispatch
from jobs.models import Job
from jobs.runner import run_job
from tests.support.jobs import make_job

pytestmark = pytest.mark.usefixtures("served_models")

SURROGATES = '''
def handler(event, context):
    return {"lone \\udc80": ["\\ud83d", "ok"]}
'''


def test_lone_surrogates_in_a_result_are_replaced_not_a_failed_job(alice, job_work_root):
    job = make_job(alice, SURROGATES)
    run_job(job.pk)
    job = Job.objects.get(pk=job.pk)
    assert job.status == "succeeded", (job.error_code, job.error_message)
    assert job.result == {"lone \ufffd": ["\ufffd", "ok"]}


def test_a_broker_that_refuses_a_job_names_no_path_to_its_owner(alice):
    job = make_job(alice, "print('never sent')\n")
    dispatch.fail_unqueued(job.pk, OSError(28, "No space left on device", "/srv/secret/broker/out/msg"))
    answer = alice.client.get(f"/status/{job.pk}").json()
    assert answer["errorCode"] == "queue_unavailable"
    assert "/srv/secret" not in answer["errorMessage"] and "No space" not in answer["errorMessage"]
