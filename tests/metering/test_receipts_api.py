"""The receipts API on receipts of real jobs: a job's chain page by page (cursor pagination), the caller's receipts
since a day, the signed daily checkpoint, the public keys (retired ones too, so a rotated-out key's receipts still
verify); and nobody else's: charlie's requests for alice's receipts answer 404."""
import base64
import json
from datetime import timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PrivateFormat, NoEncryption
from django.utils import timezone

from jobs.metering.audit import verify_ledger
from jobs.metering.checkpoints import seal_due_days
from jobs.models import Receipt
from tests.support.accounts import as_json
from tests.support.receipts import checked_chain

TWO_CALLS = '''
import ai_client


def handler(event, context):
    for prompt in ("One.", "Two."):
        ai_client.generate(prompt, temperature=0, seed=1, max_tokens=4)
'''


def _keys(client) -> dict[str, Ed25519PublicKey]:
    answer = as_json(client.get("/api/v1/receipts/keys"))
    return {key["keyId"]: Ed25519PublicKey.from_public_bytes(base64.b64decode(key["publicKey"]))
            for key in answer["keys"]}


def _all_pages(client, url: str) -> list[dict]:
    items = []
    while url:
        answer = as_json(client.get(url))
        items += answer["results"]
        url = answer["next"]
    return items


def test_a_jobs_receipts_come_page_by_page_and_verify_with_the_published_key(run_script, node, alice, anonymous):
    job = run_script(TWO_CALLS)

    receipts = _all_pages(alice.client, f"/api/v1/jobs/{job.pk}/receipts?page_size=1")
    assert [(r["seq"], r["kind"]) for r in receipts] == [(1, "call"), (2, "call"), (3, "job")]
    keys = _keys(anonymous)  # public: no key needed
    for receipt in receipts:
        keys[receipt["keyId"]].verify(bytes.fromhex(receipt["signature"]), receipt["receipt"].encode())
    assert json.loads(receipts[-1]["receipt"])["covers"] == [r["hash"] for r in receipts[:2]]
    assert receipts[-1]["hash"] == as_json(alice.client.get(f"/api/v1/jobs/{job.pk}"))["receiptHash"]


def test_another_users_receipts_are_404(run_script, node, alice, charlie):
    job = run_script(TWO_CALLS)

    answer = charlie.client.get(f"/api/v1/jobs/{job.pk}/receipts")
    assert answer.status_code == 404 and as_json(answer)["code"] == "job_not_found"
    assert as_json(charlie.client.get("/api/v1/receipts/"))["results"] == []
    Receipt.objects.filter(job=job).update(day=timezone.localdate() - timedelta(days=3))
    day = (timezone.localdate() - timedelta(days=3)).isoformat()
    assert charlie.client.get(f"/api/v1/receipts/days/{day}").status_code == 404
    assert alice.client.get(f"/api/v1/receipts/days/{day}").status_code == 200


def test_a_finished_day_gets_a_signed_checkpoint_chained_to_the_day_before(run_script, node, alice):
    jobs = [run_script(TWO_CALLS) for _ in range(3)]
    today = timezone.localdate()
    days = [today - timedelta(days=3), today - timedelta(days=3), today - timedelta(days=2)]
    for job, day in zip(jobs, days):
        Receipt.objects.filter(job=job, kind="job").update(day=day)

    assert alice.client.get(f"/api/v1/receipts/days/{today.isoformat()}").status_code == 404  # not over yet
    assert seal_due_days() == 2
    first, second = (as_json(alice.client.get(f"/api/v1/receipts/days/{day.isoformat()}")) for day in days[1:])
    keys = _keys(alice.client)
    for answer in (first, second):
        keys[answer["keyId"]].verify(bytes.fromhex(answer["signature"]), answer["checkpoint"].encode())
    assert json.loads(first["checkpoint"])["jobs"] == [job.receipt_hash for job in jobs[:2]]
    assert json.loads(second["checkpoint"])["jobs"] == [jobs[2].receipt_hash]
    assert json.loads(second["checkpoint"])["prev"] == first["hash"]


def test_receipts_signed_with_a_rotated_out_key_still_verify(run_script, node, alice, settings, tmp_path):
    before = run_script(TWO_CALLS)
    seed = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    settings.RECEIPT_SIGNING_KEY = base64.b64encode(seed).decode()
    after = run_script(TWO_CALLS)

    old_key, new_key = (Receipt.objects.filter(job=job).values_list("key_id", flat=True).first()
                        for job in (before, after))
    assert old_key != new_key
    published = {key["keyId"]: key for key in as_json(alice.client.get("/api/v1/receipts/keys"))["keys"]}
    assert published[old_key]["retiredAt"] is not None and published[new_key]["retiredAt"] is None
    checked_chain(before)
    checked_chain(after)
    assert verify_ledger(signatures="all").findings == []


def test_your_receipts_since_a_day_cover_every_chain_of_your_jobs(run_script, node, alice):
    jobs = [run_script(TWO_CALLS) for _ in range(2)]

    receipts = _all_pages(alice.client, f"/api/v1/receipts/?since={timezone.localdate().isoformat()}&page_size=2")
    assert sorted((r["jobId"], r["seq"]) for r in receipts) == sorted(
        (str(job.pk), seq) for job in jobs for seq in (1, 2, 3))
    tomorrow = (timezone.localdate() + timedelta(days=1)).isoformat()
    assert as_json(alice.client.get(f"/api/v1/receipts/?since={tomorrow}"))["results"] == []
    assert as_json(alice.client.get("/api/v1/receipts/?since=yesterday"))["code"] == "invalid_date"
