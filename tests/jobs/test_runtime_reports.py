"""What the runtime reports comes from inside the container, so a script may have written it: NUL characters,
numbers too large for a column or a float, an error that is not text. None of it may force the job into
`internal_error`; run on SQLite and on PostgreSQL (DATABASE_URL=postgres://...), which refuses NUL in text.
"""
import pytest

from jobs.models import Job
from jobs.runner import run_job
from tests.support.jobs import make_job

pytestmark = pytest.mark.usefixtures("served_models")

# Posts the script's own report before the runtime's (the first one wins), then ends as `ending` says.
FORGE = """
import http.client, json, os, socket

def post(report):
    connection = http.client.HTTPConnection("localhost")
    connection.sock = socket.socket(socket.AF_UNIX)
    connection.sock.connect("/run/ainode/gateway.sock")
    connection.request("POST", "/_job/result", report, {{"Content-Type": "application/json"}})
    return connection.getresponse().status

def handler(event, context):
    assert post({report!r}) == 200
    {ending}
"""


def run(account, code: str) -> Job:
    job = make_job(account, code)
    run_job(job.pk)
    return Job.objects.get(pk=job.pk)


def test_nul_characters_in_a_result_are_replaced_not_refused(alice, job_work_root):
    job = run(alice, "def handler(event, context):\n    return {'a\\x00b': ['c\\x00', 1, None]}\n")
    assert job.status == "succeeded", (job.error_code, job.error_message)
    assert job.result == {"a\ufffdb": ["c\ufffd", 1, None]}


def test_nul_characters_in_an_exception_are_replaced_not_refused(alice, job_work_root):
    job = run(alice, "def handler(event, context):\n    raise ValueError('bad\\x00thing')\n")
    assert job.status == "failed" and job.error_code == "script_error", (job.error_code, job.error_message)
    assert "bad\ufffdthing" in job.error_message


def test_a_forged_peak_memory_past_any_column_is_bounded_by_the_jobs_limit(alice, job_work_root):
    report = '{"result": "forged", "error": null, "peakMemoryBytes": 1000000000000000000000000000000}'
    job = run(alice, FORGE.format(report=report, ending="return 'real'"))
    assert job.status == "succeeded", (job.error_code, job.error_message)
    assert job.result == "forged"
    assert 0 < job.peak_memory_bytes <= job.memory_mb * 1024 * 1024


def test_a_forged_error_that_is_not_text_becomes_one_bounded_line(alice, job_work_root):
    report = ('{"result": null, "peakMemoryBytes": true, '
              '"error": {"type": "Boom\\u0000", "message": {"nested": ["\\u0000", 1e999]}}}')
    job = run(alice, FORGE.format(report=report, ending="os._exit(3)"))
    assert job.status == "failed" and job.error_code == "script_error", (job.error_code, job.error_message)
    assert job.error_message.startswith("Boom\ufffd: ")
    assert "\x00" not in job.error_message


def test_a_result_too_large_for_a_float_is_stored_as_null(alice, job_work_root):
    report = '{"result": {"huge": 1e999, "text": "a\\u0000"}, "error": null, "peakMemoryBytes": 1}'
    job = run(alice, FORGE.format(report=report, ending="return 'real'"))
    assert job.status == "succeeded", (job.error_code, job.error_message)
    assert job.result == {"huge": None, "text": "a\ufffd"}
