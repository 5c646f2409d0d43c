"""How a finished container maps to a job's status: the one place that reads exit codes."""
from dataclasses import dataclass

from .models import JobStatus

SIGKILL_EXIT = 137


@dataclass(frozen=True)
class ExitVerdict:
    status: str
    error_code: str
    message: str


def interpret_exit(*, exit_code: int | None, oom_killed: bool, timed_out: bool, cancelled: bool,
                   timeout_seconds: float, memory_mb: int, script_error: str = "") -> ExitVerdict:
    """Decide the job's status from what the engine and the runtime reported.

    Order matters: a cancel or timeout kill also ends in exit 137, and an out-of-memory kill is told apart from
    other kills only by Docker's `OOMKilled` flag, never by the exit code alone.
    """
    if cancelled:
        return ExitVerdict(JobStatus.CANCELLED, "cancelled", "The job was cancelled while it ran.")
    if timed_out:
        return ExitVerdict(JobStatus.TIMED_OUT, "timeout", f"The job ran past its timeout of {timeout_seconds:g} s.")
    if oom_killed:
        return ExitVerdict(JobStatus.FAILED, "out_of_memory", f"The job used more than its {memory_mb} MB of memory.")
    if exit_code == 0:
        return ExitVerdict(JobStatus.SUCCEEDED, "", "")
    if exit_code == SIGKILL_EXIT:
        return ExitVerdict(JobStatus.FAILED, "killed", "The job's process was killed (SIGKILL).")
    if script_error:
        return ExitVerdict(JobStatus.FAILED, "script_error", script_error)
    return ExitVerdict(JobStatus.FAILED, "nonzero_exit", f"The script exited with code {exit_code}.")
