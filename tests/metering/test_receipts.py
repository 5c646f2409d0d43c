"""Receipts of real jobs: every model call a real job makes (real container, real model) gets a signed receipt in
its job's chain, written with its ledger row, and the chain is closed by a job receipt; verify_ledger finds nothing
wrong with an untouched ledger, and names the row when one is edited, deleted, inserted or moved."""
import csv
import hashlib
import io

from django.db.models import F
from django.utils import timezone

from jobs.events.store import event_store
from jobs.metering.audit import verify_ledger
from jobs.models import Job, LLMCall, Receipt
from tests.support.accounts import as_json
from tests.support.receipts import checked_chain, swap_seq

THREE_CALLS = '''
import ai_client

OPTIONS = {"temperature": 0, "seed": 42, "max_tokens": 5}


def handler(event, context):
    return {"answers": [
        ai_client.generate("Say hi.", **OPTIONS),
        ai_client.chat([{"role": "user", "content": "Hi"}], **OPTIONS),
        "".join(ai_client.generate("Count to three.", stream=True, **OPTIONS)),
    ]}
'''


def test_every_call_of_a_real_job_has_a_receipt_that_verifies(run_script, node, alice):
    job = run_script(THREE_CALLS)

    bodies = checked_chain(job)
    calls = list(LLMCall.objects.filter(job=job).order_by("created_at", "id"))
    assert [body["kind"] for body in bodies] == ["call", "call", "call", "job"]
    for body, call in zip(bodies, calls):
        assert (body["call"], body["user"], body["function"], body["functionVersion"], body["model"], body["node"],
                body["promptTokens"], body["completionTokens"], body["estimated"]) == (
            call.pk, alice.id, str(job.function_id), 1, call.model_id, call.node, call.prompt_tokens,
            call.completion_tokens, False)
        assert len(body["requestSha256"]) == 64 and body["startedAt"] <= body["endedAt"]
    # What the script was handed is what the receipt's digest says was delivered.
    assert [body["deliveredSha256"] for body in bodies[:3]] == [
        hashlib.sha256(answer.encode()).hexdigest() for answer in job.result["answers"]]
    closing = bodies[-1]
    assert (closing["calls"], closing["promptTokens"], closing["completionTokens"], closing["status"]) == (
        3, job.prompt_tokens, job.completion_tokens, "succeeded")
    assert job.receipt_hash == Receipt.objects.get(job=job, kind="job").hash
    assert as_json(alice.client.get(f"/status/{job.pk}"))["receiptHash"] == job.receipt_hash
    assert verify_ledger().findings == []


def test_each_calls_receipt_hash_is_in_the_live_events(run_script, node):
    job = run_script(THREE_CALLS)

    told = [event.data for event in event_store().read(str(job.pk), after=None, wait=0)
            if event.kind == "llm_call" and event.data["phase"] == "receipt"]
    hashes = dict(Receipt.objects.filter(job=job, kind="call").values_list("seq", "hash"))
    assert sorted((data["seq"], data["receiptHash"]) for data in told) == sorted(hashes.items())
    assert sorted(data["call"] for data in told) == [1, 2, 3]


def test_the_admin_job_page_and_the_csv_export_show_the_receipts(run_script, node, alice, admin_client):
    job = run_script(THREE_CALLS)

    page = admin_client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    for receipt in Receipt.objects.filter(job=job):
        assert receipt.hash in page
    today = timezone.localdate().isoformat()
    lines = alice.client.get("/api/v1/usage/jobs.csv", {"from": today, "to": today}).getvalue().decode()
    rows = list(csv.DictReader(io.StringIO(lines)))
    assert [(row["job_id"], row["receipt_hash"]) for row in rows] == [(str(job.pk), job.receipt_hash)]


def test_verify_ledger_names_a_call_whose_tokens_were_edited(run_script, node):
    job = run_script(THREE_CALLS)
    edited = LLMCall.objects.filter(job=job).order_by("id")[1]
    LLMCall.objects.filter(pk=edited.pk).update(completion_tokens=F("completion_tokens") + 1)

    assert [str(f) for f in verify_ledger().findings] == [
        f"edited: LLMCall {edited.pk} of job {job.pk}: completionTokens differ from its receipt"]


def test_verify_ledger_names_a_deleted_call_and_a_deleted_receipt(run_script, node):
    job = run_script(THREE_CALLS)
    first, second = LLMCall.objects.filter(job=job).order_by("id")[:2]
    LLMCall.objects.filter(pk=first.pk).delete()
    assert [str(f) for f in verify_ledger().findings][0] == (
        f"deleted: LLMCall {first.pk} of job {job.pk}: its receipt names a ledger row that is gone")

    Receipt.objects.filter(job=job, seq=2).delete()
    assert str(verify_ledger().findings[0]) == (
        f"deleted: receipt 3 of job {job.pk}: expected receipt 2 of the chain here")


def test_verify_ledger_names_an_inserted_call_and_an_inserted_receipt(run_script, node):
    job = run_script(THREE_CALLS)
    model = LLMCall.objects.filter(job=job).first()
    forged = LLMCall.objects.create(job=job, model_id=model.model_id, node=model.node, endpoint="/api/chat",
                                    status="ok", prompt_tokens=10, completion_tokens=10, duration_ms=5)
    assert f"inserted: LLMCall {forged.pk} of job {job.pk}: no receipt names it" in map(str, verify_ledger().findings)

    # A receipt slipped into the chain (the ones after it moved down) does not follow the one before it.
    Receipt.objects.filter(job=job).update(seq=F("seq") + 10)
    second = Receipt.objects.get(job=job, seq=12)
    Receipt.objects.filter(job=job, seq__gte=11).update(seq=F("seq") - 9)
    Receipt.objects.create(job=job, seq=1, kind="call", call_id=forged.pk, owner_id=job.owner_id,
                           day=second.day, body=second.body.replace('"seq":2', '"seq":1'), hash="f" * 64,
                           key_id=second.key_id, signature=second.signature)
    assert str(verify_ledger().findings[0]).startswith(f"edited: receipt 1 of job {job.pk}")


def test_verify_ledger_names_a_job_whose_whole_chain_was_deleted(run_script, node):
    job = run_script(THREE_CALLS)
    Receipt.objects.filter(job=job).delete()

    assert f"deleted: job {job.pk}: its whole chain of receipts is gone (3 calls on its row)" in map(
        str, verify_ledger().findings)


def test_verify_ledger_names_receipts_swapped_in_their_chain(run_script, node):
    job = run_script(THREE_CALLS)
    swap_seq(job, 1, 2)

    assert str(verify_ledger().findings[0]) == (
        f"reordered: receipt 1 of job {job.pk}: its body says it is receipt 2 of job {job.pk}")


def test_verify_ledger_names_a_job_whose_totals_no_longer_match(run_script, node):
    job = run_script(THREE_CALLS)
    Job.objects.filter(pk=job.pk).update(prompt_tokens=F("prompt_tokens") - 1)

    assert [str(f) for f in verify_ledger().findings] == [
        f"mismatch: job {job.pk}: its promptTokens no longer match its receipts"]
