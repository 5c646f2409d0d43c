"""Chains of receipts stay whole when calls and jobs run at once: 16 concurrent calls in one real job, 16 threads
recording rows of one job's chain at once (what the row lock on the job's chain head is for), and 20 real jobs of
one user run at once; every chain runs 1..n with no gap and no fork, and verify_ledger agrees."""
import threading
import uuid

from django.db import connections

from jobs import services
from jobs.metering.audit import verify_ledger
from jobs.metering.ledger import record_call
from jobs.models import Job, Receipt
from nodeclient import Usage
from tests.support.jobs import run_in_thread
from tests.support.receipts import checked_chain

SIXTEEN_AT_ONCE = '''
import threading
import ai_client


def handler(event, context):
    answers = []
    def ask(n):
        answers.append(ai_client.generate(f"Number {n}.", temperature=0, seed=1, max_tokens=3))
    threads = [threading.Thread(target=ask, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(answers)
'''

ONE_CALL = '''
import ai_client


def handler(event, context):
    return ai_client.generate("Hello.", temperature=0, seed=1, max_tokens=3)
'''


def test_sixteen_concurrent_calls_of_one_job_make_one_chain(run_script, node, settings):
    settings.GATEWAY_MAX_CONCURRENT_CALLS = 16

    job = run_script(SIXTEEN_AT_ONCE, timeout_seconds=120)

    assert job.status == "succeeded" and job.result == 16
    bodies = checked_chain(job)
    assert [body["kind"] for body in bodies] == ["call"] * 16 + ["job"]
    assert sorted(body["call"] for body in bodies[:16]) == sorted(job.calls.values_list("id", flat=True))
    assert verify_ledger().findings == []


def test_rows_recorded_from_sixteen_threads_at_once_never_fork_the_chain(run_script, node):
    job = run_script(ONE_CALL)
    Job.objects.filter(pk=job.pk).update(receipt_hash="")  # reopened: more calls come
    start = threading.Barrier(16)

    def record() -> None:
        try:
            start.wait()
            for _ in range(4):
                record_call(job_id=str(job.pk), model_id=job.model_id, node="recorded-openai", endpoint="/api/chat",
                            streamed=False, usage=Usage(7, 3), max_tokens=3, done_reason="stop", duration_ms=5,
                            node_duration_ms=4)
        finally:
            connections.close_all()

    writers = [threading.Thread(target=record) for _ in range(16)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()

    seqs = list(Receipt.objects.filter(job=job).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, 1 + 1 + 1 + 64))  # the first call, its job receipt, then 64 more calls
    assert Job.objects.get(pk=job.pk).llm_calls == 65
    findings = [str(finding) for finding in verify_ledger().findings]
    assert findings == []


def test_twenty_jobs_of_one_user_at_once_each_have_a_whole_chain(run_script, node, alice, model_id):
    function = services.deploy_function(owner=alice.user, name=f"one-{uuid.uuid4().hex[:6]}",
                                        code=ONE_CALL.encode(), timeout_seconds=120)
    jobs = [services.submit_job(owner=alice.user, function=function, model_id=model_id, input_data=None)
            for _ in range(20)]

    for runner in [run_in_thread(job.pk) for job in jobs]:
        runner.join(timeout=300)

    for job in Job.objects.filter(pk__in=[job.pk for job in jobs]):
        assert job.status == "succeeded", (job.error_code, job.error_message)
        assert [body["kind"] for body in checked_chain(job)] == ["call", "job"]
    assert verify_ledger().findings == []
