"""Signatures of deliveries, as the Standard Webhooks specification writes them (standardwebhooks.com):
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the secret's bytes
(`whsec_` + base64). During a rotation's overlap a delivery carries one signature per secret, separated by spaces.
"""
import base64
import hashlib
import hmac
import secrets

PREFIX = "whsec_"


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))


def signature(secret: str, *, message_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(_key(secret), f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def signed_headers(secrets_in_use: list[str], *, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers that identify and sign one attempt of delivery `message_id`."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, message_id=message_id, timestamp=timestamp, body=body)
                                      for s in secrets_in_use),
    }


def verify(secret: str, *, headers: dict[str, str], body: bytes) -> bool:
    """Whether one of the signatures in `headers` (lower-case names) is `secret`'s: what a receiver does."""
    expected = signature(secret, message_id=headers["webhook-id"], timestamp=int(headers["webhook-timestamp"]),
                         body=body)
    return any(hmac.compare_digest(expected, given) for given in headers["webhook-signature"].split())
