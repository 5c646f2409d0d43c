"""Fair share is visible (issue 29): per queue and per node, each user's jobs (or model calls) waiting and in flight,
their recent service decayed to now, their weight and their share of the pool, as jobs.fairness.standings tells
them, on the admin's Fair share page (staff with the permission to view jobs only) and in /metrics."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import Quota
from jobs.fairness import counters, seats
from jobs.fairness.standings import PoolStanding, UserStanding, pool_standings
from jobs.models import CallTicket, Job, JobStatus
from models_catalog.models import AINode
from tests.billing.helpers import PageReader
from tests.service.ops_helpers import parse_metrics, total
from tests.support.jobs import make_job

pytestmark = pytest.mark.usefixtures("served_models")  # the node "test-node", on queue "jobs"

PAGE = "/admin/usage/fair-share/"
QUEUE_POOL, NODE_POOL = counters.queue_pool("jobs"), counters.node_pool("test-node")


def waiting_jobs(account, count: int) -> list[Job]:
    return [make_job(account, "x = 1\n") for _ in range(count)]


def in_flight_jobs(account, count: int) -> list[Job]:
    """Jobs the relay sent to the queue's workers: one still queued, the others running."""
    jobs = waiting_jobs(account, count)
    Job.objects.filter(pk=jobs[0].pk).update(dispatched_at=timezone.now())
    Job.objects.filter(pk__in=[job.pk for job in jobs[1:]]).update(dispatched_at=timezone.now(),
                                                                    status=JobStatus.RUNNING)
    return jobs


def calls(account, *, waiting: int, holding: int) -> None:
    """Model calls of a running job of `account` on the node: `waiting` for a slot, `holding` one."""
    job = in_flight_jobs(account, 2)[1]
    for granted_at in [None] * waiting + [timezone.now()] * holding:
        CallTicket.objects.create(node="test-node", owner=account.user, job=job, units=10, granted_at=granted_at)


def pool(pools: list[PoolStanding], name: str) -> PoolStanding:
    return next(standing for standing in pools if standing.pool == name)


def user(standing: PoolStanding, account) -> UserStanding:
    return next(each for each in standing.users if each.owner_id == account.id)


@pytest.fixture
def busy_queue(alice, bob, charlie):
    """Alice has 2 jobs waiting and 3 in flight, bob 1 waiting; alice was served 300 units, bob 100, charlie 0.01
    (too little to show); bob's weight is 2; the queue's one live worker has 4 seats."""
    waiting_jobs(alice, 2)
    in_flight_jobs(alice, 3)
    waiting_jobs(bob, 1)
    counters.charge(QUEUE_POOL, alice.id, 300.0, served=3)
    counters.charge(QUEUE_POOL, bob.id, 100.0, served=1)
    counters.charge(QUEUE_POOL, charlie.id, 0.005, served=0)
    Quota.objects.create(user=bob.user, share_weight=2.0)
    seats.declare("worker-1", {"jobs": 4})


def test_a_queue_shows_each_users_jobs_waiting_and_in_flight_service_weight_and_share(busy_queue, alice, bob):
    queue = pool(pool_standings(), QUEUE_POOL)

    assert (queue.kind, queue.name, queue.seats, queue.nodes) == ("queue", "jobs", 4, ["test-node"])
    assert [standing.username for standing in queue.users] == ["alice", "bob"]  # charlie's 0.005 units: nothing
    assert (user(queue, alice).waiting, user(queue, alice).in_flight) == (2, 3)
    assert (user(queue, bob).waiting, user(queue, bob).in_flight) == (1, 0)
    assert user(queue, alice).service == pytest.approx(300.0, rel=1e-3)
    assert (user(queue, alice).weight, user(queue, bob).weight) == (1.0, 2.0)
    assert user(queue, alice).share == pytest.approx(0.75, rel=1e-3)
    assert user(queue, bob).share == pytest.approx(0.25, rel=1e-3)
    assert sum(standing.share for standing in queue.users) == pytest.approx(1.0)
    assert (queue.waiting, queue.in_flight) == (3, 3)


def test_recent_service_is_decayed_to_now_with_the_half_life(busy_queue, alice, bob, settings):
    half_life = timedelta(seconds=settings.FAIR_SHARE_HALF_LIFE_SECONDS)

    later = pool(pool_standings(now=timezone.now() + 2 * half_life), QUEUE_POOL)

    assert user(later, alice).service == pytest.approx(75.0, rel=1e-3)
    assert user(later, bob).service == pytest.approx(25.0, rel=1e-3)
    assert user(later, alice).share == pytest.approx(0.75, rel=1e-3)


def test_a_pool_with_nothing_waiting_nor_in_flight_goes_when_its_service_has_decayed(alice, settings):
    counters.charge(QUEUE_POOL, alice.id, 300.0, served=1)
    half_life = timedelta(seconds=settings.FAIR_SHARE_HALF_LIFE_SECONDS)

    assert [standing.pool for standing in pool_standings()] == [QUEUE_POOL]
    assert pool_standings(now=timezone.now() + 20 * half_life) == []  # 300 / 2**20 units: nothing to show


def test_a_node_shows_each_users_calls_waiting_and_holding_a_slot_against_its_limit(alice, bob):
    AINode.objects.filter(name="test-node").update(max_concurrent_calls=2)
    calls(alice, waiting=0, holding=2)
    calls(bob, waiting=3, holding=0)
    counters.charge(NODE_POOL, alice.id, 90.0, served=2)
    counters.charge(NODE_POOL, bob.id, 10.0, served=1)

    pools = pool_standings()
    node = pool(pools, NODE_POOL)

    assert [standing.pool for standing in pools] == [QUEUE_POOL, NODE_POOL]  # the jobs making the calls, in flight
    assert (node.kind, node.name, node.limit, node.queue) == ("node", "test-node", 2, "jobs")
    assert (user(node, alice).waiting, user(node, alice).in_flight) == (0, 2)
    assert (user(node, bob).waiting, user(node, bob).in_flight) == (3, 0)
    assert user(node, alice).share == pytest.approx(0.9, rel=1e-3)
    assert user(node, bob).share == pytest.approx(0.1, rel=1e-3)


def test_operators_see_the_standings_on_the_fair_share_page(busy_queue, admin_client, settings):
    settings.FAIR_SHARE_HALF_LIFE_SECONDS = 1e9  # the units shown to the tenth are those charged
    page = PageReader()
    page.feed(admin_client.get(PAGE).content.decode())

    rows = page.rows[f"pool-{QUEUE_POOL}"]
    assert set(rows) == {"alice", "bob"}
    assert {key: rows["alice"][key] for key in ("waiting", "in-flight", "service", "weight", "share")} == {
        "waiting": "2", "in-flight": "3", "service": "300.0", "weight": "1", "share": "75.0 %"}
    assert (rows["bob"]["waiting"], rows["bob"]["weight"], rows["bob"]["share"]) == ("1", "2", "25.0 %")
    assert page.by_id[f"seats-{QUEUE_POOL}"] == "4"
    assert page.by_id[f"nodes-{QUEUE_POOL}"] == "test-node"


def test_the_admin_index_links_to_the_fair_share_page(admin_client):
    assert f'href="{PAGE}"' in admin_client.get("/admin/").content.decode()


def test_the_fair_share_page_is_for_staff_who_may_view_jobs_only(client, django_user_model, alice):
    from django.contrib.auth.models import Permission

    assert client.get(PAGE)["Location"].startswith("/admin/login/")
    client.force_login(alice.user)
    assert client.get(PAGE)["Location"].startswith("/admin/login/")
    clerk = django_user_model.objects.create_user("clerk", is_staff=True)
    client.force_login(clerk)
    assert client.get(PAGE).status_code == 403
    clerk.user_permissions.add(Permission.objects.get(codename="view_job"))
    assert client.get(PAGE).status_code == 200


def test_metrics_export_the_standings_per_user(busy_queue, alice, bob, anonymous, settings):
    settings.METRICS_TOKEN = ""
    AINode.objects.filter(name="test-node").update(max_concurrent_calls=1)
    calls(bob, waiting=1, holding=1)
    counters.charge(NODE_POOL, bob.id, 50.0, served=1)

    response = anonymous.get("/metrics")
    assert response.status_code == 200, response.content
    samples = parse_metrics(response.content.decode())

    assert total(samples, "ainode_fair_share_waiting_jobs", queue="jobs", user="alice") == 2
    assert total(samples, "ainode_fair_share_in_flight_jobs", queue="jobs", user="alice") == 3
    assert total(samples, "ainode_fair_share_waiting_jobs", queue="jobs", user="bob") == 1
    assert total(samples, "ainode_fair_share_in_flight_jobs", queue="jobs", user="bob") == 2  # the calls' jobs
    assert total(samples, "ainode_fair_share_waiting_calls", node="test-node", user="bob") == 1
    assert total(samples, "ainode_fair_share_in_flight_calls", node="test-node", user="bob") == 1
    assert total(samples, "ainode_fair_share_service_units", pool=QUEUE_POOL, user="alice") == pytest.approx(
        300.0, rel=1e-3)
    assert total(samples, "ainode_fair_share_share", pool=QUEUE_POOL, user="bob") == pytest.approx(0.25, rel=1e-3)
    assert total(samples, "ainode_fair_share_share", pool=NODE_POOL, user="bob") == pytest.approx(1.0)
    assert total(samples, "ainode_fair_share_share", user="charlie") == 0


def test_the_standings_take_the_same_few_queries_whatever_the_number_of_users(busy_queue, charlie,
                                                                              django_assert_max_num_queries):
    calls(charlie, waiting=2, holding=1)
    counters.charge(NODE_POOL, charlie.id, 5.0, served=1)

    with django_assert_max_num_queries(8):  # jobs waiting, in flight, calls, counters, names, weights, seats, nodes
        pools = pool_standings()

    assert [standing.pool for standing in pools] == [QUEUE_POOL, NODE_POOL]
