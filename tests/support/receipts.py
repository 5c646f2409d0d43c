"""Receipts as a stranger checks them: each signature against the published public key, each chain link by hand,
with `cryptography` directly (not the server's own verification), and the tampering an operator with database
access could do to the ledger and its receipts."""
from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

GENESIS = "0" * 64


def published_keys() -> dict[str, Ed25519PublicKey]:
    from billing.models import ReceiptKey

    return {key.key_id: Ed25519PublicKey.from_public_bytes(base64.b64decode(key.public_key))
            for key in ReceiptKey.objects.all()}


def checked_chain(job: Any) -> list[dict[str, Any]]:
    """The bodies of `job`'s receipts in chain order, after asserting that each one hashes to its hash, is signed by
    a published key and follows the one before it, and that the last is the job receipt covering all the others."""
    bodies = [link["body"] for link in _checked_links(job)]
    assert bodies and bodies[-1]["kind"] == "job"
    return bodies


def checked_chain_with_corrections(job: Any) -> list[dict[str, Any]]:
    """Like `checked_chain`, for a chain that goes on after its job receipt (corrections made later): each link as
    its body with its hash beside it ({"hash", "body"}); the links after the job receipt as their bodies."""
    links = _checked_links(job)
    closing = next(n for n, link in enumerate(links) if link["body"]["kind"] == "job")
    return [*links[:closing], links[closing]["body"], *(link["body"] for link in links[closing + 1:])]


def _checked_links(job: Any) -> list[dict[str, Any]]:
    from jobs.models import Receipt

    keys = published_keys()
    links: list[dict[str, Any]] = []
    prev = GENESIS
    for number, receipt in enumerate(Receipt.objects.filter(job=job).order_by("seq"), start=1):
        data = receipt.body.encode()
        assert hashlib.sha256(data).hexdigest() == receipt.hash
        keys[receipt.key_id].verify(bytes.fromhex(receipt.signature), data)  # raises InvalidSignature
        body = json.loads(data)
        assert (body["seq"], receipt.seq, body["prev"], body["job"], body["keyId"]) == (
            number, number, prev, str(job.pk), receipt.key_id)
        if body["kind"] == "job":
            assert body["covers"] == [link["hash"] for link in links]
        links.append({"hash": receipt.hash, "body": body})
        prev = receipt.hash
    return links


def swap_seq(job: Any, first: int, second: int) -> None:
    """Swap two receipts' places in their chain, as a raw UPDATE would."""
    from jobs.models import Receipt

    Receipt.objects.filter(job=job, seq=first).update(seq=10 ** 6)
    Receipt.objects.filter(job=job, seq=second).update(seq=first)
    Receipt.objects.filter(job=job, seq=10 ** 6).update(seq=second)
