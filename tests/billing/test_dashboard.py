"""The operator's usage dashboard: its figures are the ledger's own sums, over any range; staff only."""
import re
from datetime import timedelta

import pytest

from core.formatting import count, money, percent

DASHBOARD = "/admin/usage/"


def test_the_dashboards_figures_equal_direct_ledger_sums(admin_client, alice, bob, charlie, seed_usage,
                                                          ledger_sums, read_page, day0):
    seed_usage([alice, bob, charlie], calls=450, days=100)
    start, end = day0.date() + timedelta(days=10), day0.date() + timedelta(days=80)

    response = admin_client.get(DASHBOARD, {"from": start.isoformat(), "to": end.isoformat()})

    assert response.status_code == 200
    page = read_page(response.content)
    total = ledger_sums(start=start, end=end)["all"]
    assert page.by_id["total-cost"] == money(total.cost)
    assert page.by_id["total-tokens"] == count(total.total_tokens)
    assert page.by_id["total-prompt-tokens"] == count(total.prompt_tokens)
    assert page.by_id["total-completion-tokens"] == count(total.completion_tokens)
    assert page.by_id["total-calls"] == count(total.calls)
    assert page.by_id["total-failed-calls"] == count(total.failed_calls)
    assert page.by_id["total-unmetered"] == count(total.unmetered_calls)
    assert page.by_id["total-uncosted"] == count(total.uncosted_calls)
    assert page.by_id["total-jobs"] == count(total.jobs)

    by_model = ledger_sums(lambda day, owner, function, model: model, start=start, end=end)
    assert set(page.rows["by-model"]) == set(by_model)
    for model, sums in by_model.items():
        row = page.rows["by-model"][model]
        assert (row["jobs"], row["calls"], row["failed"], row["prompt"], row["completion"], row["cost"],
                row["uncosted"]) == (count(sums.jobs), count(sums.calls), count(sums.failed_calls),
                                     count(sums.prompt_tokens), count(sums.completion_tokens), money(sums.cost),
                                     count(sums.uncosted_calls)), model
        assert row["failure-rate"] == percent(sums.failed_calls / sums.calls if sums.calls else None)

    by_user = ledger_sums(lambda day, owner, function, model: str(owner), start=start, end=end)
    assert set(page.rows["by-user"]) == set(by_user)
    for owner, sums in by_user.items():
        row = page.rows["by-user"][owner]
        assert (row["jobs"], row["calls"], row["tokens"], row["cost"]) == (
            count(sums.jobs), count(sums.calls), count(sums.total_tokens), money(sums.cost))

    by_function = ledger_sums(lambda day, owner, function, model: str(function), start=start, end=end)
    assert set(page.rows["by-function"]) == set(by_function)
    for function, sums in by_function.items():
        row = page.rows["by-function"][function]
        assert (row["calls"], row["tokens"], row["cost"]) == (count(sums.calls), count(sums.total_tokens),
                                                              money(sums.cost))

    by_day = ledger_sums(lambda day, owner, function, model: day.isoformat(), start=start, end=end)
    assert len(page.rows["by-day"]) == (end - start).days + 1  # every day, the quiet ones too
    for day, row in page.rows["by-day"].items():
        sums = by_day.get(day)
        assert (row["calls"], row["prompt"], row["cost"], row["jobs"]) == (
            (count(sums.calls), count(sums.prompt_tokens), money(sums.cost), count(sums.jobs)) if sums
            else ("0", "0", money(0), "0")), day


def test_top_spenders_come_first(admin_client, alice, bob, usual_prices, make_function, new_job, record, day0,
                                 read_page):
    record(new_job(make_function(alice), at=day0), prompt=100, completion=100)
    record(new_job(make_function(bob), at=day0), prompt=100_000, completion=100_000)

    page = admin_client.get(DASHBOARD, {"from": day0.date().isoformat(), "to": day0.date().isoformat()})

    assert list(read_page(page.content).rows["by-user"]) == [str(bob.id), str(alice.id)]
    assert "Top spenders" in page.content.decode()


def test_it_draws_its_charts_as_inline_svg_without_scripts(admin_client, alice, usual_prices, make_function,
                                                           new_job, record, day0):
    record(new_job(make_function(alice), at=day0), prompt=100, completion=100)

    html = admin_client.get(DASHBOARD, {"from": "2026-02-01", "to": "2026-03-31"}).content.decode()

    assert html.count("<svg") >= 7
    assert "<title>2026-03-01: prompt 100, completion 100</title>" in html
    # Nothing comes from another site (a CDN): every page resource is this server's own. (A bare "cdn" may well
    # appear inside the page's random CSRF token.)
    assert not re.findall(r"""(?:src|href)\s*=\s*["']?(?:[a-z]+:)?//""", html, flags=re.IGNORECASE)


def test_the_default_range_is_the_last_30_days(admin_client, read_page):
    page = read_page(admin_client.get(DASHBOARD).content)

    assert len(page.rows["by-day"]) == 30


@pytest.mark.parametrize("query, code_text", [
    ({"from": "2026-02-30", "to": "2026-03-01"}, "`from` must be a date written YYYY-MM-DD"),
    ({"from": "yesterday"}, "`from` must be a date written YYYY-MM-DD"),
    ({"to": "2026/03/01"}, "`to` must be a date written YYYY-MM-DD"),
    ({"from": "2026-03-02", "to": "2026-03-01"}, "is after `to`"),
    ({"from": "2000-01-01", "to": "2026-03-01"}, "the longest is 3660"),
])
def test_bad_dates_answer_400_with_the_reason(admin_client, read_page, query, code_text):
    response = admin_client.get(DASHBOARD, query)

    assert response.status_code == 400
    assert code_text in read_page(response.content).by_id["range-error"]


def test_it_is_for_staff_with_the_permission_only(client, django_user_model, alice):
    from django.contrib.auth.models import Permission

    assert client.get(DASHBOARD)["Location"].startswith("/admin/login/")
    client.force_login(alice.user)
    assert client.get(DASHBOARD)["Location"].startswith("/admin/login/")
    clerk = django_user_model.objects.create_user("clerk", is_staff=True)  # staff, without the permission
    client.force_login(clerk)
    assert client.get(DASHBOARD).status_code == 403
    clerk.user_permissions.add(Permission.objects.get(codename="view_usagedaily"))
    assert client.get(DASHBOARD).status_code == 200


def test_the_admin_index_links_to_it(admin_client):
    assert f'href="{DASHBOARD}"' in admin_client.get("/admin/").content.decode()


def test_operators_export_every_users_jobs_of_the_range_as_csv(admin_client, alice, bob, usual_prices,
                                                               make_function, new_job, record, day0):
    record(new_job(make_function(alice), at=day0), prompt=1000, completion=1000)
    record(new_job(make_function(bob), at=day0 + timedelta(days=1)), prompt=2000, completion=0)
    new_job(make_function(bob), at=day0 + timedelta(days=5))  # outside the range

    response = admin_client.get("/admin/usage/jobs.csv", {"from": "2026-03-01", "to": "2026-03-02"})

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert lines[0].startswith("job_id,created_at,owner,")
    assert [line.split(",")[2] for line in lines[1:]] == ["alice", "bob"]
    assert [line.split(",")[-3:-1] for line in lines[1:]] == [["0.1300000000", "USD"], ["0.1000000000", "USD"]]
    assert [line.split(",")[-1] for line in lines[1:]] == ["", ""]  # receipt_hash: neither job has ended
