"""The admin's job actions need the permission to change jobs: a staff user who may only view them can neither
cancel nor re-run any tenant's job, and is not even offered the actions."""
import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from jobs.models import Job
from tests.support.jobs import make_job

pytestmark = pytest.mark.usefixtures("served_models")


def staff_client(*codenames: str) -> Client:
    user = User.objects.create_user(username="-".join(("staff",) + codenames), is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def apply_action(client: Client, action: str, *jobs: Job):
    return client.post("/admin/jobs/job/", {"action": action, "_selected_action": [str(j.pk) for j in jobs]})


def test_a_view_only_staff_user_is_not_offered_cancel_or_rerun(alice):
    make_job(alice, "x = 1\n")
    page = staff_client("view_job").get("/admin/jobs/job/").content.decode()
    assert 'value="export_csv"' in page
    assert 'value="cancel_jobs"' not in page and 'value="rerun_jobs"' not in page


def test_a_view_only_staff_user_cannot_cancel_a_job(alice):
    job = make_job(alice, "x = 1\n")
    apply_action(staff_client("view_job"), "cancel_jobs", job)
    job.refresh_from_db()
    assert job.status == "queued"


def test_a_view_only_staff_user_cannot_rerun_a_job(alice):
    job = make_job(alice, "x = 1\n")
    apply_action(staff_client("view_job"), "rerun_jobs", job)
    assert Job.objects.count() == 1


def test_staff_who_may_change_jobs_cancel_and_rerun_them(alice):
    first, second = make_job(alice, "x = 1\n"), make_job(alice, "x = 2\n")
    client = staff_client("view_job", "change_job")
    apply_action(client, "cancel_jobs", first)
    first.refresh_from_db()
    assert first.status == "cancelled"
    apply_action(client, "rerun_jobs", second)
    assert Job.objects.filter(function=second.function).count() == 2
