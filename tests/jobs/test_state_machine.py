"""The job state machine (`Job.objects.move`) and the one function that reads container exits."""
import itertools

import pytest

from jobs.exits import interpret_exit
from jobs.models import TERMINAL, TRANSITIONS, Job, JobStatus
from tests.support.jobs import make_job

pytestmark = pytest.mark.usefixtures("served_models")


ALL = list(JobStatus)
LEGAL = {
    (JobStatus.QUEUED, JobStatus.RUNNING),
    (JobStatus.QUEUED, JobStatus.CANCELLED),
    (JobStatus.QUEUED, JobStatus.FAILED),
    (JobStatus.RUNNING, JobStatus.SUCCEEDED),
    (JobStatus.RUNNING, JobStatus.FAILED),
    (JobStatus.RUNNING, JobStatus.TIMED_OUT),
    (JobStatus.RUNNING, JobStatus.CANCELLED),
    (JobStatus.RUNNING, JobStatus.QUEUED),  # lost-job recovery, for a job that never started its container
}


@pytest.fixture
def job(alice) -> Job:
    return make_job(alice, "def handler(event, context):\n    return 1\n")


def _set(job: Job, status: str) -> None:
    Job.objects.filter(pk=job.pk).update(status=status)


def test_the_drawn_transitions_are_the_ones_the_model_enforces():
    assert {(source, target) for source, targets in TRANSITIONS.items() for target in targets} == LEGAL
    assert set(TERMINAL) == {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.CANCELLED}


@pytest.mark.parametrize("source,target", [pair for pair in itertools.product(ALL, ALL) if pair not in LEGAL])
def test_it_refuses_an_illegal_move_and_leaves_the_row_alone(job, source, target):
    _set(job, source)
    assert Job.objects.move(job.pk, target, error_code="should-not-be-written") is False
    job.refresh_from_db()
    assert job.status == source
    assert job.error_code == ""


@pytest.mark.parametrize("source,target", sorted(LEGAL))
def test_it_makes_a_legal_move_with_its_fields(job, source, target):
    _set(job, source)
    assert Job.objects.move(job.pk, target, error_code="e") is True
    job.refresh_from_db()
    assert (job.status, job.error_code) == (target, "e")


def test_only_a_running_job_may_move_back_to_queued(job):
    for source in set(ALL) - {JobStatus.RUNNING}:
        _set(job, source)
        assert Job.objects.move(job.pk, JobStatus.QUEUED) is False


@pytest.mark.parametrize("terminal", TERMINAL)
def test_a_terminal_job_never_changes_again(job, terminal):
    _set(job, terminal)
    for target in ALL:
        if target != JobStatus.QUEUED:
            assert Job.objects.move(job.pk, target) is False
    job.refresh_from_db()
    assert job.status == terminal


def test_of_two_racing_moves_only_the_first_wins(job):
    assert Job.objects.move(job.pk, JobStatus.RUNNING) is True
    assert Job.objects.move(job.pk, JobStatus.RUNNING) is False
    assert Job.objects.move(job.pk, JobStatus.CANCELLED) is True
    assert Job.objects.move(job.pk, JobStatus.SUCCEEDED) is False
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED


def test_moving_a_job_that_does_not_exist_reports_no_move(db):
    import uuid

    assert Job.objects.move(uuid.uuid4(), JobStatus.RUNNING) is False


# --- interpret_exit ---------------------------------------------------------------------------------------------

def verdict(**overrides):
    arguments = dict(exit_code=0, oom_killed=False, timed_out=False, cancelled=False, timeout_seconds=5,
                     memory_mb=64, script_error="")
    arguments.update(overrides)
    return interpret_exit(**arguments)


def test_exit_zero_is_success():
    assert (verdict().status, verdict().error_code) == (JobStatus.SUCCEEDED, "")


def test_a_cancel_wins_over_everything_else_because_the_cancel_kill_also_exits_137():
    result = verdict(exit_code=137, cancelled=True, timed_out=True, oom_killed=True)
    assert (result.status, result.error_code) == (JobStatus.CANCELLED, "cancelled")


def test_a_timeout_kill_is_timed_out_not_killed():
    result = verdict(exit_code=137, timed_out=True)
    assert (result.status, result.error_code) == (JobStatus.TIMED_OUT, "timeout")
    assert "5 s" in result.message


def test_a_timeout_wins_over_an_oom_flag():
    assert verdict(exit_code=137, timed_out=True, oom_killed=True).status == JobStatus.TIMED_OUT


def test_out_of_memory_is_told_by_dockers_flag():
    result = verdict(exit_code=137, oom_killed=True)
    assert (result.status, result.error_code) == (JobStatus.FAILED, "out_of_memory")
    assert "64 MB" in result.message


def test_an_oom_flag_counts_even_when_the_exit_code_is_not_137():
    assert verdict(exit_code=1, oom_killed=True).error_code == "out_of_memory"


def test_exit_137_without_the_oom_flag_is_a_plain_kill_not_out_of_memory():
    result = verdict(exit_code=137)
    assert (result.status, result.error_code) == (JobStatus.FAILED, "killed")


def test_a_script_error_keeps_the_scripts_message():
    result = verdict(exit_code=1, script_error="ValueError: nope")
    assert (result.status, result.error_code, result.message) == (JobStatus.FAILED, "script_error", "ValueError: nope")


def test_a_nonzero_exit_without_a_reported_error_names_the_code():
    result = verdict(exit_code=3)
    assert (result.status, result.error_code) == (JobStatus.FAILED, "nonzero_exit")
    assert "3" in result.message


def test_an_unknown_exit_code_is_a_failure_not_a_success():
    assert verdict(exit_code=None).status == JobStatus.FAILED
