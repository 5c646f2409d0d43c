"""The keys of receipts: the Ed25519 key that signs them, and the public keys that verify them.

The signing key comes from RECEIPT_SIGNING_KEY (base64 of its 32-byte seed) or RECEIPT_SIGNING_KEY_FILE (that, or
a PEM private key); in development the file is made under VAR_DIR on first use. A key is named by its `key_id`, the
first 16 hex digits of the SHA-256 of its raw public key, and every receipt names the key that signed it. The first
time a chain is closed, a call corrected or a day checkpointed, the key is published as a `ReceiptKey` row (if it is
not yet) and the keys before it are marked retired: rotating is configuring a new key, and the old receipts still
verify against their key's row.
"""
import base64
import functools
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone

from .models import ReceiptKey

logger = logging.getLogger(__name__)

ALGORITHM = "Ed25519"


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    private: Ed25519PrivateKey
    public_raw: bytes

    def sign(self, data: bytes) -> str:
        """The signature of `data`, hex."""
        return self.private.sign(data).hex()


def key_id_of(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def signing_key() -> SigningKey:
    """The configured signing key (read once per process)."""
    return _load(settings.RECEIPT_SIGNING_KEY, settings.RECEIPT_SIGNING_KEY_FILE)


@functools.lru_cache(maxsize=4)
def _load(value: str, path: str) -> SigningKey:
    private = _private_key(value.encode() if value else _read_or_make(Path(path)))
    public_raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return SigningKey(key_id=key_id_of(public_raw), private=private, public_raw=public_raw)


def _private_key(material: bytes) -> Ed25519PrivateKey:
    text = material.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            private = serialization.load_pem_private_key(text, password=None)
            if not isinstance(private, Ed25519PrivateKey):
                raise ValueError("not an Ed25519 key")
            return private
        seed = base64.b64decode(text, validate=True)
        return Ed25519PrivateKey.from_private_bytes(seed)
    except ValueError as exc:
        raise ImproperlyConfigured(f"the receipt signing key is not an Ed25519 key (base64 of a 32-byte seed, or "
                                   f"PEM): {exc}") from None


def _read_or_make(path: Path) -> bytes:
    """The key file's text; a missing file is made (only where settings allow no configured key: development)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = base64.b64encode(os.urandom(32))
    try:  # O_EXCL: two processes starting at once agree on the one file the first wrote
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(descriptor, "wb") as file:
        file.write(seed + b"\n")
    logger.warning("made a new receipt signing key in %s (development); configure RECEIPT_SIGNING_KEY or "
                   "RECEIPT_SIGNING_KEY_FILE in production", path)
    return seed


def publish(key: SigningKey) -> None:
    """Make `key` the published signing key: its ReceiptKey row exists, and the keys before it are retired. One
    SELECT when it is published already."""
    if ReceiptKey.objects.filter(key_id=key.key_id, retired_at__isnull=True).exists():
        return
    with transaction.atomic():
        _, created = ReceiptKey.objects.get_or_create(
            key_id=key.key_id, defaults={"public_key": base64.b64encode(key.public_raw).decode()})
        if created:
            logger.info("receipts are signed with key %s from now on", key.key_id)
        ReceiptKey.objects.exclude(key_id=key.key_id).filter(retired_at__isnull=True).update(retired_at=timezone.now())
        ReceiptKey.objects.filter(key_id=key.key_id).update(retired_at=None)


def public_keys() -> dict[str, Ed25519PublicKey]:
    """Every published public key (retired ones too), by key id."""
    return {row.key_id: Ed25519PublicKey.from_public_bytes(base64.b64decode(row.public_key))
            for row in ReceiptKey.objects.all()}


def signature_holds(keys: dict[str, Ed25519PublicKey], key_id: str, data: bytes, signature: str) -> bool:
    """Whether `signature` (hex) is key `key_id`'s over `data`; False for an unknown key or a malformed one."""
    key = keys.get(key_id)
    if key is None:
        return False
    try:
        key.verify(bytes.fromhex(signature), data)
    except (InvalidSignature, ValueError):
        return False
    return True
