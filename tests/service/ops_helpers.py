"""Helpers of the service tests: the documented production environment, and reading Prometheus' text format."""
from __future__ import annotations

import base64
import secrets

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# docs/operating.md's "Environment" section documents exactly these.
PRODUCTION_ENV = {
    "ENVIRONMENT": "production",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "RECEIPT_SIGNING_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
    "ALLOWED_HOSTS": "api.example.org",
    "CSRF_TRUSTED_ORIGINS": "https://api.example.org",
    "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto: https",
}


def parse_metrics(text: str) -> Samples:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == name and set(labels.items()) <= set(sample_labels))
