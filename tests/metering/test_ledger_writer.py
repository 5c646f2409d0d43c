"""A job's ledger rows are written off the answers' path, on one thread of the job's own (one database connection
for the job's life), in the order the calls ended; the gateway's stop waits for them, and a row that comes after it
is still written.
"""
import threading
import time

from jobs.metering.ledger import LedgerWriter


def test_rows_are_written_in_order_on_one_thread_and_close_waits_for_them():
    written: list[tuple[int, int]] = []
    writer = LedgerWriter("job-1")

    for number in range(20):
        writer.write(lambda number=number: (time.sleep(0.005), written.append((threading.get_ident(), number))))
    writer.close(timeout=10)

    assert [number for _, number in written] == list(range(20))
    assert len({thread for thread, _ in written}) == 1
    assert written[0][0] != threading.get_ident()


def test_a_row_queued_after_close_is_written_by_the_caller_at_once():
    written: list[int] = []
    writer = LedgerWriter("job-2")
    writer.close(timeout=1)

    writer.write(lambda: written.append(threading.get_ident()))

    assert written == [threading.get_ident()]


def test_a_row_that_fails_does_not_stop_the_rows_after_it():
    written: list[int] = []
    writer = LedgerWriter("job-3")

    def fails() -> None:
        raise RuntimeError("the database went away")

    writer.write(fails)
    writer.write(lambda: written.append(1))
    writer.close(timeout=10)

    assert written == [1]
