"""The bell of the outbox's relays (jobs/outbox.py): a NOTIFY on the channel every relay LISTENs on. PostgreSQL
delivers it when the ringing transaction commits, and drops it when it rolls back, so a relay woken by it always
finds what woke it committed."""
from core.postgres import notify_on_commit

OUTBOX_CHANNEL = "job_outbox"


def ring() -> None:
    """Wake the relays once the current transaction commits (PostgreSQL; other databases have no relay)."""
    notify_on_commit(OUTBOX_CHANNEL)
