"""A person's walk through the operator's pages, in a real headless Chromium (Debian's chromium and
chromium-driver; scripts/services.sh browser installs them): the admin login, the usage dashboard, a job's page.

Set DASHBOARD_SCREENSHOT=docs/dashboard.png to keep the dashboard's screenshot for the README.
"""
import os
import shutil
from datetime import timedelta

from core.formatting import count, money
from tests.support.browser import BROWSER_WAIT as WAIT
from tests.support.browser import text_of


def test_an_operator_logs_in_reads_the_dashboard_and_opens_a_job(live_server, browser, admin_user, alice, bob,
                                                                  charlie, seed_usage, ledger_sums, day0, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    jobs = seed_usage([alice, bob, charlie], calls=500, days=90)
    start, end = day0.date(), day0.date() + timedelta(days=89)
    wait = WebDriverWait(browser, WAIT)

    # The admin's login page, as a person meets it.
    browser.get(f"{live_server.url}/admin/")
    wait.until(shown.presence_of_element_located((By.ID, "id_username")))
    browser.find_element(By.ID, "id_username").send_keys("admin")
    browser.find_element(By.ID, "id_password").send_keys("password")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()

    # The index links to the dashboard.
    wait.until(shown.element_to_be_clickable((By.LINK_TEXT, "Usage dashboard"))).click()
    wait.until(shown.presence_of_element_located((By.ID, "range-form")))

    # Choose the range with the date picker's fields, and show it.
    for element_id, day in (("range-from", start), ("range-to", end)):
        field = browser.find_element(By.ID, element_id)
        browser.execute_script("arguments[0].value = arguments[1]", field, day.isoformat())
    browser.find_element(By.ID, "range-submit").click()
    wait.until(lambda driver: f"from={start.isoformat()}" in driver.current_url)

    total = ledger_sums(start=start, end=end)["all"]
    assert text_of(browser, "total-cost") == money(total.cost)
    assert text_of(browser, "total-tokens") == count(total.total_tokens)
    assert text_of(browser, "total-calls") == count(total.calls)
    assert text_of(browser, "total-failed-calls") == count(total.failed_calls)
    assert text_of(browser, "total-jobs") == count(total.jobs)
    by_model = ledger_sums(lambda day, owner, function, model: model, start=start, end=end)
    for model, sums in by_model.items():
        row = browser.find_element(By.CSS_SELECTOR, f'#by-model tr[data-key="{model}"]')
        assert row.find_element(By.CSS_SELECTOR, "td.cost").text == money(sums.cost), model
        assert row.find_element(By.CSS_SELECTOR, "td.calls").text == count(sums.calls), model
    # The charts are drawn, and a person sees them: inline SVG with bars.
    charts = browser.find_elements(By.CSS_SELECTOR, "#usage-dashboard svg.chart")
    assert len(charts) >= 7 and all(chart.is_displayed() for chart in charts)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#usage-dashboard svg.chart rect")) > 90

    screenshot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(screenshot))
    if os.environ.get("DASHBOARD_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["DASHBOARD_SCREENSHOT"])

    # A job's page: its LLM calls, inline.
    job = max(jobs, key=lambda job: job.calls.count())
    browser.get(f"{live_server.url}/admin/jobs/job/?q={job.pk}")
    wait.until(shown.element_to_be_clickable((By.LINK_TEXT, str(job.pk)[:8]))).click()
    wait.until(shown.presence_of_element_located((By.ID, "calls-group")))
    rows = browser.find_elements(By.CSS_SELECTOR, "#calls-group tbody tr.has_original")
    assert len(rows) == job.calls.count() >= 1
    first = job.calls.order_by("created_at", "id").first()
    assert str(first.prompt_tokens if first.prompt_tokens is not None else "-") in rows[0].text
    assert "Tokens and cost" in browser.page_source
