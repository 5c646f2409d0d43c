"""The job's admin page follows a running job live, in a real headless Chromium: its output appears line by line
while it runs, and the status line ends on the job's final status, calls and tokens."""
import pytest
from django.test import Client

from jobs.models import Job
from tests.support.browser import BROWSER_WAIT as WAIT
from tests.support.browser import text_of
from tests.support.jobs import deploy, make_job, submit

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

SLOW_STEPS = '''
import time
import ai_client


def handler(event, context):
    for n in range(12):
        print(f"step {n}", flush=True)
        time.sleep(0.5)
        if n == 5:
            ai_client.generate("Say hi.", temperature=0, seed=42, max_tokens=6)
    return "ok"
'''


def test_an_operator_watches_a_running_job_on_its_admin_page(live_stack, browser, admin_user, alice):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    function = deploy(alice, SLOW_STEPS)
    job_id = submit(alice, function["functionId"]).json()["jobId"]
    wait = WebDriverWait(browser, WAIT)
    browser.get(f"{live_stack.url}/admin/")
    wait.until(shown.presence_of_element_located((By.ID, "id_username")))
    browser.find_element(By.ID, "id_username").send_keys("admin")
    browser.find_element(By.ID, "id_password").send_keys("password")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait.until(shown.presence_of_element_located((By.ID, "user-tools")))

    browser.get(f"{live_stack.url}/admin/jobs/job/{job_id}/change/")
    wait.until(lambda driver: "step 2" in text_of(driver, "job-live-output"))
    assert not Job.objects.get(pk=job_id).is_terminal, "the output must show while the job still runs"
    wait.until(lambda driver: "succeeded" in text_of(driver, "job-live-line"))

    job = Job.objects.get(pk=job_id)
    assert text_of(browser, "job-live-output").splitlines() == [f"step {n}" for n in range(12)]
    line = text_of(browser, "job-live-line")
    assert "1 call(s)" in line, line
    assert f"{job.prompt_tokens} prompt + {job.completion_tokens} completion tokens" in line


def test_the_admin_event_stream_is_for_staff_only(alice, operator, served_models):
    job = make_job(alice, "print('hi')\n")
    Job.objects.filter(pk=job.pk).update(status="succeeded", finished_at="2026-01-01T00:00Z")
    url = f"/admin/jobs/job/{job.pk}/events/"

    outsider = Client()
    outsider.force_login(alice.user)
    assert outsider.get(url).status_code == 302  # to the admin's login

    staff = Client()
    staff.force_login(operator.user)
    response = staff.get(url)
    assert response.status_code == 200 and response["Content-Type"].startswith("text/event-stream")
    body = b"".join(response.streaming_content)
    assert b"event: result" in body and str(job.pk).encode() in body
    assert staff.get(f"/admin/jobs/job/{job.pk}/change/").status_code == 200
