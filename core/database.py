"""Work that must outlast a database restart: a worker that has run a job's script holds what only it knows (the
result, a model call's counts), and a crash of PostgreSQL must cost that work time, not the work.

`outlasting_outages(action, ...)` runs `action` and, while the database cannot be reached, runs it again with
growing pauses for at most `seconds`. Each try is a whole transaction of its own: it must not be called inside
`transaction.atomic()`. A try whose COMMIT reached the server but whose answer did not is the one ambiguous case:
`done`, when given, is asked first on each later try whether the earlier one took effect after all, and its truthy
answer is returned instead of trying again (so that a ledger row is never written twice).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connection

from .backoff import Backoff

logger = logging.getLogger(__name__)

DATABASE_DOWN = (OperationalError, InterfaceError)
FIRST_PAUSE_SECONDS = 0.5
MAX_PAUSE_SECONDS = 3.0

T = TypeVar("T")


def outlasting_outages(action: Callable[[], T], *, what: str, seconds: float,
                       done: Callable[[], T | None] | None = None) -> T:
    """`action()`, tried again while the database is down, for at most `seconds`; then its error is raised."""
    backoff = Backoff(seconds, first=FIRST_PAUSE_SECONDS, most=MAX_PAUSE_SECONDS)
    failed = False
    while True:
        try:
            if failed and done is not None:
                earlier = done()
                if earlier:
                    return earlier
            result = action()
        except DATABASE_DOWN as exc:
            if connection.in_atomic_block or not backoff.allows():
                raise
            if not failed:
                logger.warning("%s: the database is unavailable (%s); trying again for up to %.0f s", what,
                               str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                               seconds)
            failed = True
            connection.close()  # unusable now: the next try connects again
            backoff.wait()
            continue
        if failed:
            logger.info("%s: done once the database answered again", what)
        return result
