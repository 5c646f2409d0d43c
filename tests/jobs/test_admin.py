"""The Django admin: staff see every user's functions and jobs; what the worker writes is read-only there."""
import pytest
from django.test import Client

from jobs.models import Job
from tests.support.jobs import make_job

pytestmark = pytest.mark.usefixtures("served_models")


def admin_client(account) -> Client:
    client = Client()
    client.force_login(account.user)
    return client


def test_staff_see_every_users_jobs(operator, alice, charlie):
    alices, charlies = make_job(alice, "x = 1\n"), make_job(charlie, "x = 2\n")
    response = admin_client(operator).get("/admin/jobs/job/")
    assert response.status_code == 200
    page = response.content.decode()
    assert str(alices.pk) in page and str(charlies.pk) in page


def test_staff_see_every_users_functions(operator, alice, charlie):
    alices, charlies = make_job(alice, "x = 1\n").function, make_job(charlie, "x = 2\n").function
    page = admin_client(operator).get("/admin/jobs/function/").content.decode()
    assert alices.name in page and charlies.name in page


def test_the_job_list_filters_by_status_and_model(operator, alice):
    job = make_job(alice, "x = 1\n", model_id="model-b")
    client = admin_client(operator)
    assert str(job.pk) in client.get("/admin/jobs/job/?status__exact=queued").content.decode()
    assert str(job.pk) not in client.get("/admin/jobs/job/?status__exact=failed").content.decode()
    assert str(job.pk) in client.get("/admin/jobs/job/?model_id=model-b").content.decode()


def test_a_job_page_does_not_let_staff_change_what_the_worker_wrote(operator, alice):
    job = make_job(alice, "x = 1\n")
    client = admin_client(operator)
    page = client.get(f"/admin/jobs/job/{job.pk}/change/")
    assert page.status_code == 200
    client.post(f"/admin/jobs/job/{job.pk}/change/", {"status": "succeeded", "stdout": "forged"})
    job.refresh_from_db()
    assert (job.status, job.stdout) == ("queued", "")


def test_a_user_who_is_not_staff_cannot_open_the_admin(alice):
    response = admin_client(alice).get("/admin/jobs/job/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_staff_cannot_add_a_job_by_hand(operator):
    assert admin_client(operator).get("/admin/jobs/job/add/").status_code == 403
    assert Job.objects.count() == 0
