"""Runs of a function whose dependencies are not built yet: an async run is held and sent when the build ends, a
sync one waits at most RUN_SYNC_TIMEOUT, a failed build refuses runs; a build is claimed once. No Docker here: the
build's end is recorded through jobs.dependencies, as the builder records it."""
from __future__ import annotations

import pytest

from jobs import dependencies
from jobs.models import DependencyLayer, Job, LayerStatus
from tests.support.brokers import broker_messages
from tests.support.databases import on_postgresql
from tests.support.jobs import relay_released_jobs, submit
from tests.support.layers import deploy_with_requirements

pytestmark = pytest.mark.usefixtures("served_models")


@pytest.fixture
def building(alice) -> dict:
    """A function of alice's whose layer is still building."""
    return deploy_with_requirements(alice, "import six\n", "six==1.16.0\n")


def sent_jobs(broker) -> list[str]:
    return [message["headers"]["argsrepr"] for message in broker_messages(broker)
            if message["headers"]["task"] == "jobs.run_job"]


def test_an_async_run_is_held_until_the_build_ends_then_sent(alice, building, _isolated_broker,
                                                             django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = submit(alice, building["functionId"])
    assert response.status_code == 202, response.content
    job_id = response.json()["jobId"]
    assert Job.objects.get(pk=job_id).status == "queued"
    assert sent_jobs(_isolated_broker) == []

    layer = DependencyLayer.objects.get()
    dependencies.start_build(layer.pk)
    dependencies.finish_build(DependencyLayer.objects.get(pk=layer.pk), chunks=[b"layer"], log="built",
                              archive_bytes=5, archive_sha256="0" * 64)
    if on_postgresql():  # fair share: the job is back in the outbox, and a relay sends it in turn
        assert Job.objects.get(pk=job_id).dispatched_at is None
        assert relay_released_jobs() == 1
    assert [job_id in sent for sent in sent_jobs(_isolated_broker)] == [True]


def test_a_failed_build_fails_its_held_jobs(alice, building, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job_id = submit(alice, building["functionId"]).json()["jobId"]
    layer = DependencyLayer.objects.get()
    dependencies.start_build(layer.pk)
    dependencies.fail_build(layer.pk, code="dependency_build_failed", log="ERROR: no wheel for six")
    job = Job.objects.get(pk=job_id)
    assert (job.status, job.error_code) == ("failed", "dependency_build_failed")
    assert "no wheel for six" in job.error_message


def test_a_sync_run_that_would_wait_past_the_timeout_is_refused(alice, building, settings):
    settings.RUN_SYNC_TIMEOUT = 0.5
    response = submit(alice, building["functionId"], asynchronous=False)
    assert response.status_code == 409, response.content
    assert response.json()["code"] == "dependencies_building"
    assert not Job.objects.exists()


def test_runs_of_a_failed_build_are_refused_at_submit(alice, building):
    DependencyLayer.objects.update(status=LayerStatus.FAILED, error_code="dependency_build_failed",
                                   log="ERROR: No matching distribution found for six==1.16.0")
    for asynchronous in (True, False):
        response = submit(alice, building["functionId"], asynchronous=asynchronous)
        assert response.status_code == 409, response.content
        assert response.json()["code"] == "dependency_build_failed"
        assert "six==1.16.0" in response.json()["detail"]
    assert not Job.objects.exists()


def test_a_build_is_claimed_once(building):
    layer = DependencyLayer.objects.get()
    assert dependencies.start_build(layer.pk) is not None
    assert dependencies.start_build(layer.pk) is None  # a redelivered message builds nothing


def test_a_failed_set_deployed_again_is_built_again(alice, building, _isolated_broker,
                                                    django_capture_on_commit_callbacks):
    DependencyLayer.objects.update(status=LayerStatus.FAILED, error_code="dependency_build_failed")
    with django_capture_on_commit_callbacks(execute=True):
        again = deploy_with_requirements(alice, "import six\n", "six==1.16.0\n")
    assert again["dependencies"]["status"] == "building"
    assert DependencyLayer.objects.count() == 1
    assert [m["headers"]["task"] for m in broker_messages(_isolated_broker)] == ["jobs.build_layer"]


def test_charlie_cannot_see_alice_s_dependencies(alice, charlie, building):
    response = charlie.client.get(f"/api/v1/functions/{building['functionId']}/")
    assert response.status_code == 404
