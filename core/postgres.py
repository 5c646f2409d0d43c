"""What PostgreSQL adds to a transaction, and other databases (SQLite in development) do without: an advisory lock
held until the transaction ends, and a NOTIFY delivered when it commits (dropped when it rolls back)."""
from django.db import connection


def lock_until_end(name: str) -> None:
    """Hold the advisory lock called `name` until the current transaction ends, waiting for whoever holds it. Off
    PostgreSQL nothing is taken: SQLite's transactions take the database's write lock as they begin (settings'
    `transaction_mode` IMMEDIATE), so they take turns all the same."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [name])


def notify_on_commit(channel: str) -> None:
    """Send a NOTIFY on `channel` with the current transaction's commit (at once outside one). Off PostgreSQL there
    is no one listening: nothing is sent."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"NOTIFY {channel}")
