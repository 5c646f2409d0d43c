"""The worker's event writer over the real database store: output becomes whole lines in arrival order, the cap
is marked, batches keep every event, and numbers run 1, 2, 3 per job whoever writes."""
import threading

import pytest
from django.db import connection

from jobs.events.store import DatabaseEventStore
from jobs.events.writer import EventWriter
from jobs.models import JobEvent
from tests.support.jobs import make_job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def job(alice, served_models):
    return make_job(alice, "print('hi')\n")


def stored(job) -> list[tuple[int, str, dict]]:
    return list(JobEvent.objects.filter(job=job).order_by("seq").values_list("seq", "kind", "data"))


def writer(job, *, flush_bytes: int = 64 * 1024) -> EventWriter:
    return EventWriter(str(job.pk), store=DatabaseEventStore(), flush_seconds=0.05, flush_bytes=flush_bytes).start()


def test_output_goes_out_as_whole_lines_in_the_order_it_came_with_other_events(job):
    live = writer(job)
    live.output("stdout", b"one\ntw")
    live.output("stderr", b"oops\n")
    live.output("stdout", b"o\nthree")
    live.emit("llm_call", {"phase": "start"})
    live.output("stdout", b" and a half\n")
    live.close()

    events = stored(job)
    assert [seq for seq, _, _ in events] == [1, 2, 3, 4, 5]
    assert [(kind, data) for _, kind, data in events] == [
        ("stdout", {"text": "one\n", "truncated": False}),
        ("stderr", {"text": "oops\n", "truncated": False}),
        ("stdout", {"text": "two\n", "truncated": False}),
        ("llm_call", {"phase": "start"}),
        ("stdout", {"text": "three and a half\n", "truncated": False}),
    ]


def test_a_partial_last_line_is_written_when_the_writer_closes(job):
    live = writer(job)
    live.output("stdout", b"no newline at the end")
    live.close()
    assert [(kind, data["text"]) for _, kind, data in stored(job)] == [("stdout", "no newline at the end")]


def test_a_burst_of_lines_becomes_few_events_holding_every_line(job):
    live = writer(job)
    for n in range(5000):
        live.output("stdout", f"line {n}\n".encode())
    live.close()
    events = stored(job)
    assert len(events) < 100
    assert "".join(data["text"] for _, _, data in events) == "".join(f"line {n}\n" for n in range(5000))


def test_the_last_kept_part_of_a_capped_stream_is_marked_truncated_and_nothing_follows(job):
    live = writer(job)
    live.output("stdout", b"kept\npart of a li", True)
    live.output("stdout", b"ne that was cut\n")
    live.close()
    assert [(kind, data) for _, kind, data in stored(job)] == [
        ("stdout", {"text": "kept\npart of a li", "truncated": True})]


def test_a_character_split_across_chunks_is_decoded_whole(job):
    live = writer(job, flush_bytes=1024)
    text = ("é" * 1000 + "\n").encode()
    live.output("stdout", text[:1001])
    live.output("stdout", text[1001:])
    live.close()
    assert "".join(data["text"] for _, _, data in stored(job)) == "é" * 1000 + "\n"


def test_writers_of_one_job_in_several_threads_number_its_events_without_gaps_or_duplicates(job):
    store = DatabaseEventStore()

    def write(name: str) -> None:
        try:
            for n in range(20):
                store.append(str(job.pk), [("status", {"writer": name, "n": n})])
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = stored(job)
    assert [seq for seq, _, _ in events] == list(range(1, 81))
    for name in ("w0", "w1", "w2", "w3"):
        assert [data["n"] for _, _, data in events if data["writer"] == name] == list(range(20))


def test_a_listener_reads_after_the_id_it_gives(job):
    store = DatabaseEventStore()
    store.append(str(job.pk), [("status", {"n": n}) for n in range(5)])
    assert [e.data["n"] for e in store.read(str(job.pk), after=None, wait=0)] == [0, 1, 2, 3, 4]
    assert [e.data["n"] for e in store.read(str(job.pk), after="3", wait=0)] == [3, 4]
    assert store.read(str(job.pk), after="5", wait=0.1) == []


def test_pruning_deletes_the_events_of_jobs_quiet_for_longer_than_the_ttl_and_keeps_the_others(alice, job):
    from datetime import timedelta

    from django.utils import timezone

    old_job = make_job(alice, "print('old')\n")
    store = DatabaseEventStore()
    store.append(str(old_job.pk), [("status", {"n": 1}), ("status", {"n": 2})])
    store.append(str(job.pk), [("status", {"n": 1})])
    JobEvent.objects.filter(job=old_job).update(created_at=timezone.now() - timedelta(days=2))

    assert store.prune(older_than=timedelta(days=1)) == 2
    assert list(JobEvent.objects.values_list("job_id", flat=True)) == [job.pk]


def test_a_redis_stream_of_events_expires_after_the_ttl_from_its_last_write(job, settings):
    import redis

    from jobs.events.store import RedisEventStore
    from tests.support.brokers import REDIS_TEST_URL

    settings.JOB_EVENTS_TTL_SECONDS = 600
    store, client = RedisEventStore(REDIS_TEST_URL), redis.Redis.from_url(REDIS_TEST_URL)
    try:
        store.append(str(job.pk), [("status", {"n": 1}), ("status", {"n": 2})])
        assert 590 <= client.ttl(f"events:{job.pk}") <= 600
        first, second = store.read(str(job.pk), after=None, wait=0)
        assert store.read(str(job.pk), after=first.id, wait=0) == [second]
        assert store.is_cursor(first.id) and not store.is_cursor("12")
    finally:
        client.delete(f"events:{job.pk}")
        client.close()
