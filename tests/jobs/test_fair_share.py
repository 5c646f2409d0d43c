"""Fair share between users (jobs.fairness): which job a queue's workers run next, and which model call a node at its
limit serves next. PostgreSQL only: the relays that decide are woken by LISTEN/NOTIFY and take turns on advisory
locks. These tests drive the decisions directly (a fill of a queue, the grant of a node's slots) with real rows;
tests/jobs/test_fair_share_workers.py runs them through real workers and the real model."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import Quota
from jobs import services
from jobs.endings import end_job
from jobs.events.store import event_store
from jobs.fairness import call_slots, counters, job_turns, seats
from jobs.fairness.call_slots import CallSlots, SlotWaitEnded
from jobs.models import CallTicket, Job, JobStatus
from tests.support.databases import postgresql_only
from tests.support.threads import run_in_threads

pytestmark = [
    postgresql_only("fair share's relays need PostgreSQL (LISTEN/NOTIFY, advisory locks)"),
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("served_models"),
]

QUEUE = "jobs"
POOL = counters.queue_pool(QUEUE)


class Sender:
    """The broker, as a fill sees it: records the jobs it was given, in order."""

    def __init__(self) -> None:
        self.sent: list[Job] = []

    def __call__(self, job_id, queue: str) -> None:
        self.sent.append(Job.objects.get(pk=job_id))

    def owners(self) -> list[str]:
        return [job.owner.username for job in self.sent]


@pytest.fixture
def sender() -> Sender:
    return Sender()


@pytest.fixture
def queue_jobs(alice, bob, charlie):
    """`queue_jobs(account, n, interactive=False)`: n queued jobs of `account` waiting in the outbox, oldest first."""
    functions = {}

    def make(account, n: int = 1, *, interactive: bool = False) -> list[Job]:
        if account.user.pk not in functions:
            functions[account.user.pk] = services.deploy_function(
                owner=account.user, name="fair", code=b"def handler(event, context):\n    return event\n",
                memory_mb=None, timeout_seconds=None, env=None)
        function = functions[account.user.pk]
        return [services.create_job(owner=account.user, function=function, function_version=function.current_version,
                                    model_id="smollm2:135m", node="test-node", queue=QUEUE, input_data=None,
                                    memory_mb=128, timeout_seconds=30, interactive=interactive)
                for _ in range(n)]

    return make


def worker_seats(n: int, *, worker: str = "w1") -> None:
    seats.declare(worker, {QUEUE: n})


def finish(job: Job, *, seconds: float = 1.0, prompt: int = 10, completion: int = 30) -> None:
    """Run and end `job` as a worker would: its user is charged what it cost."""
    started = timezone.now() - timedelta(seconds=seconds)
    assert Job.objects.move(job.pk, JobStatus.RUNNING, started_at=started)
    assert end_job(job.pk, JobStatus.SUCCEEDED, finished_at=timezone.now(), prompt_tokens=prompt,
                   completion_tokens=completion)


# --- which job runs next --------------------------------------------------------------------------------------------

def test_a_queue_without_a_live_worker_keeps_its_jobs_in_the_outbox(alice, queue_jobs, sender):
    queue_jobs(alice, 3)
    assert job_turns.fill(QUEUE, sender) == 0
    worker_seats(1)
    seats.WorkerSeats.objects.update(seen_at=timezone.now() - timedelta(seconds=seats.LIVE_SECONDS + 1))
    assert job_turns.fill(QUEUE, sender) == 0, "a dead worker's seats are not counted"
    assert Job.objects.filter(job_turns.WAITING).count() == 3


def test_a_lone_user_gets_every_seat_and_one_more(alice, queue_jobs, sender, settings):
    settings.FAIR_SHARE_AHEAD = 1
    queue_jobs(alice, 10)
    worker_seats(2, worker="w1")
    worker_seats(3, worker="w2")
    assert job_turns.fill(QUEUE, sender) == 6
    assert job_turns.fill(QUEUE, sender) == 0, "no room until a job ends"
    finish(sender.sent[0])
    assert job_turns.fill(QUEUE, sender) == 1


def test_the_user_with_less_recent_service_goes_first(alice, bob, queue_jobs, sender):
    counters.charge(POOL, alice.user.pk, 5000.0, served=10)
    queue_jobs(alice, 3)
    queue_jobs(bob, 3)
    worker_seats(2)
    job_turns.fill(QUEUE, sender)
    # Room for 3: bob's three, in flight, are still expected to cost less than alice's recent service.
    assert sender.owners() == ["bob", "bob", "bob"], "bob first although alice's jobs are older"


def test_equal_users_take_turns(alice, bob, queue_jobs, sender):
    queue_jobs(alice, 4)
    queue_jobs(bob, 4)
    worker_seats(3)
    job_turns.fill(QUEUE, sender)
    assert sender.owners() == ["alice", "bob", "alice", "bob"]


def test_a_users_jobs_go_in_the_order_they_were_submitted_synchronous_runs_first(alice, queue_jobs, sender):
    queued = queue_jobs(alice, 3)
    waiting_caller = queue_jobs(alice, 1, interactive=True)
    later = queue_jobs(alice, 2)
    worker_seats(5)
    job_turns.fill(QUEUE, sender)
    assert [job.pk for job in sender.sent] == [job.pk for job in waiting_caller + queued + later]


def simulate(sender: Sender, turns: int, *, refill=None) -> None:
    """A queue with one seat (and none ahead): each turn sends one job, which then ends having cost the same."""
    for turn in range(turns):
        if refill is not None:
            refill(turn)
        assert job_turns.fill(QUEUE, sender) == 1
        finish(sender.sent[-1])


def test_weights_split_the_seats_in_their_ratio(alice, bob, queue_jobs, sender, settings):
    settings.FAIR_SHARE_AHEAD = 0
    Quota.objects.create(user=alice.user, share_weight=2.0)
    queue_jobs(alice, 30)
    queue_jobs(bob, 30)
    worker_seats(1)
    simulate(sender, 30)
    assert sender.owners().count("alice") == 20 and sender.owners().count("bob") == 10, sender.owners()


def test_a_late_user_is_served_first_and_a_steady_flood_is_never_starved(alice, bob, queue_jobs, sender, settings):
    settings.FAIR_SHARE_AHEAD = 0
    worker_seats(1)
    queue_jobs(alice, 5)

    def flood(turn: int) -> None:
        queue_jobs(alice, 1)  # alice always has jobs waiting
        if turn == 10:
            queue_jobs(bob, 8)

    simulate(sender, 40, refill=flood)
    owners = sender.owners()
    assert owners[:10] == ["alice"] * 10, "alone, alice has every turn"
    assert owners[10:18] == ["bob"] * 8, "bob, with no recent service, goes first until he catches up"
    assert owners[18:] == ["alice"] * 22, "and alice, flooding, is served again"


def test_no_user_is_passed_over_longer_than_the_bound(alice, bob, queue_jobs, sender, settings):
    settings.FAIR_SHARE_MAX_WAIT_SECONDS = 60
    counters.charge(POOL, alice.user.pk, 1e9, served=1, served_at=timezone.now() - timedelta(seconds=61))
    [overdue] = queue_jobs(alice, 1)
    Job.objects.filter(pk=overdue.pk).update(created_at=timezone.now() - timedelta(seconds=61))
    queue_jobs(bob, 3)
    worker_seats(1)
    job_turns.fill(QUEUE, sender)
    assert sender.owners() == ["alice", "bob"], "alice's service is huge, but her job was passed over for 61 s"


def test_a_sent_job_tells_how_long_it_was_held_for_fairness(alice, bob, queue_jobs, sender, settings):
    settings.FAIR_SHARE_AHEAD = 0
    counters.charge(POOL, alice.user.pk, 5000.0, served=10)
    [held] = queue_jobs(alice, 1)
    [favoured] = queue_jobs(bob, 1)
    worker_seats(1)
    job_turns.fill(QUEUE, sender)
    finish(favoured)
    job_turns.fill(QUEUE, sender)
    assert [job.pk for job in sender.sent] == [favoured.pk, held.pk]

    def sent_event(job: Job) -> dict:
        [event] = [event.data for event in event_store().read(str(job.pk), after=None, wait=0) if event.kind == "queue"]
        return event

    assert sent_event(favoured)["heldForFairnessMs"] == 0
    held_event = sent_event(held)
    assert held_event["phase"] == "sent" and held_event["queue"] == QUEUE
    assert 0 < held_event["heldForFairnessMs"] <= held_event["waitedMs"]


def test_two_relays_never_fill_the_same_room(alice, bob, queue_jobs, settings):
    settings.FAIR_SHARE_AHEAD = 0
    queue_jobs(alice, 10)
    queue_jobs(bob, 10)
    worker_seats(4)
    first, second = Sender(), Sender()
    assert run_in_threads(lambda sender: job_turns.fill(QUEUE, sender), [(first,), (second,)]) == []
    assert len(first.sent) + len(second.sent) == 4
    assert Job.objects.filter(job_turns.IN_FLIGHT).count() == 4


def test_a_job_that_ends_charges_its_user_what_it_cost(alice, queue_jobs, sender):
    worker_seats(1)
    [job] = queue_jobs(alice, 1)
    job_turns.fill(QUEUE, sender)
    finish(job, seconds=2.0, prompt=10, completion=30)
    standing = counters.standings(POOL, [alice.user.pk])[alice.user.pk]
    expected = counters.token_units(10, 30) + 2.0 * counters.RUNNING_SECOND_UNITS
    assert standing.service == pytest.approx(expected, rel=0.02)
    assert standing.served == pytest.approx(1.0, rel=0.02)


def test_service_decays_with_its_half_life(alice, settings):
    settings.FAIR_SHARE_HALF_LIFE_SECONDS = 60
    counters.charge(POOL, alice.user.pk, 1000.0, served=1)
    later = timezone.now() + timedelta(seconds=120)
    assert counters.standings(POOL, [alice.user.pk], now=later)[alice.user.pk].service == pytest.approx(250, rel=0.01)


# --- which call goes next when a node is at its limit ---------------------------------------------------------------

def running_job(account, queue_jobs) -> Job:
    [job] = queue_jobs(account, 1)
    assert Job.objects.move(job.pk, JobStatus.RUNNING, started_at=timezone.now())
    return job


def slots_of(account, job: Job, limit: int) -> CallSlots:
    return CallSlots(job_id=str(job.pk), owner_id=account.user.pk, interactive=False, limits={"test-node": limit})


def test_a_node_at_its_limit_hands_its_slot_to_the_user_with_less_service(alice, bob, queue_jobs):
    node_pool = counters.node_pool("test-node")
    counters.charge(node_pool, alice.user.pk, 5000.0, served=10)
    holder = slots_of(alice, running_job(alice, queue_jobs), 1).take("test-node", prompt_tokens=5, wait=5,
                                                                      abandon=lambda: False)
    order: list[str] = []

    def call(account, delay: float) -> None:
        threading.Event().wait(delay)  # alice asks first
        slot = slots_of(account, running_job(account, queue_jobs), 1).take("test-node", prompt_tokens=5, wait=10,
                                                                          abandon=lambda: False)
        order.append(account.user.username)
        slot.release(prompt_tokens=5, completion_tokens=5)

    threads = [threading.Thread(target=call, args=(alice, 0.0)), threading.Thread(target=call, args=(bob, 0.3))]
    for thread in threads:
        thread.start()
    threading.Event().wait(0.8)
    assert CallTicket.objects.filter(granted_at__isnull=True).count() == 2, "both wait for the one slot"
    holder.release(prompt_tokens=5, completion_tokens=5)
    for thread in threads:
        thread.join(15)
    assert order == ["bob", "alice"]
    assert not CallTicket.objects.exists()
    connection.close()


def test_a_nodes_limit_holds_across_workers_and_hands_every_slot_on(alice, bob, charlie, queue_jobs):
    limit, peak, active = 2, [0], [0]
    lock = threading.Lock()
    jobs = {account.user.username: running_job(account, queue_jobs) for account in (alice, bob, charlie)}

    def calls(account) -> None:
        # Each thread stands for another worker process: its own job, its own database connection.
        slots = slots_of(account, jobs[account.user.username], limit)
        for _ in range(4):
            slot = slots.take("test-node", prompt_tokens=5, wait=20, abandon=lambda: False)
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
                granted = CallTicket.objects.filter(granted_at__isnull=False).count()
            assert granted <= limit
            threading.Event().wait(0.05)
            with lock:
                active[0] -= 1
            slot.release(prompt_tokens=5, completion_tokens=5)

    assert run_in_threads(calls, [(account,) for account in (alice, bob, charlie)]) == []
    assert peak[0] == limit, "the node was used to its limit, never past it"
    assert not CallTicket.objects.exists()


def test_a_call_waiting_for_a_slot_gives_up_when_its_job_ends(alice, bob, queue_jobs):
    holder = slots_of(alice, running_job(alice, queue_jobs), 1).take("test-node", prompt_tokens=5, wait=5,
                                                                      abandon=lambda: False)
    gone = threading.Event()
    threading.Timer(0.3, gone.set).start()
    with pytest.raises(SlotWaitEnded) as ended:
        slots_of(bob, running_job(bob, queue_jobs), 1).take("test-node", prompt_tokens=5, wait=10,
                                                            abandon=gone.is_set)
    assert ended.value.code == "call_dropped"
    with pytest.raises(SlotWaitEnded) as busy:
        slots_of(bob, running_job(bob, queue_jobs), 1).take("test-node", prompt_tokens=5, wait=0.3,
                                                            abandon=lambda: False)
    assert busy.value.code == "node_busy"
    holder.release()
    assert not CallTicket.objects.exists()


def test_the_slot_of_a_job_that_ended_is_freed_for_the_next_call(alice, bob, queue_jobs):
    crashed = running_job(alice, queue_jobs)
    slots_of(alice, crashed, 1).take("test-node", prompt_tokens=5, wait=5, abandon=lambda: False)  # never released
    end_job(crashed.pk, JobStatus.FAILED, error_code="worker_lost", finished_at=timezone.now())
    slot = slots_of(bob, running_job(bob, queue_jobs), 1).take("test-node", prompt_tokens=5, wait=5,
                                                               abandon=lambda: False)
    assert slot.waited_ms < 2000
    slot.release()
    assert call_slots.grant("test-node", 1) == 0
