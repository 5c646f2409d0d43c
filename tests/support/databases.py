"""Which database the test run is on (DATABASE_URL: SQLite by default, PostgreSQL in CI)."""
from __future__ import annotations

import pytest


def on_postgresql() -> bool:
    from django.conf import settings

    return settings.DATABASES["default"]["ENGINE"].endswith("postgresql")


def postgresql_only(reason: str) -> pytest.MarkDecorator:
    """Skip a test (or a module, in its `pytestmark`) on any other database; `reason` says what needs PostgreSQL."""
    return pytest.mark.skipif(not on_postgresql(), reason=reason)
