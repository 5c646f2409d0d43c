"""A job that has not started its container when the engine fails waits for the engine (JOB_ENGINE_WAIT_SECONDS)
and then runs, once; only when the engine stays away past the wait is it failed as `executor_unavailable`.

The engine's socket, as the worker sees it, is a real Unix socket that relays to the real engine, and that is not
there yet when the job is claimed: the engine is down, then comes back."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from jobs.models import Job
from tests.support.containers import container_creations, pump
from tests.support.jobs import make_job, run_in_thread

ENGINE = "/var/run/docker.sock"


class EngineSocket:
    """A Unix socket at `path` relaying every connection to the real engine, from `start()` on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server: socket.socket | None = None

    def start(self) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(self.path))
        self.server.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            engine.connect(ENGINE)
            threading.Thread(target=pump, args=(client, engine), daemon=True).start()
            threading.Thread(target=pump, args=(engine, client), daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()


def test_a_job_claimed_while_the_engine_is_down_runs_once_it_is_back(alice, job_work_root, settings, short_tmp,
                                                                      docker_client, served_models):
    engine = EngineSocket(short_tmp / "engine.sock")
    settings.DOCKER_HOST = f"unix://{engine.path}"
    settings.JOB_ENGINE_WAIT_SECONDS = 60
    job = make_job(alice, "def handler(event, context):\n    return 'ran'\n")
    since = time.time()
    runner = run_in_thread(job.pk)
    try:
        time.sleep(3)  # claimed, and waiting for an engine that is not there
        assert Job.objects.get(pk=job.pk).status == "running"
        engine.start()
        runner.join(60)
    finally:
        engine.stop()
    job.refresh_from_db()
    assert (job.status, job.result) == ("succeeded", "ran"), (job.error_code, job.error_message)
    assert container_creations(docker_client, job.pk, since) == 1


def test_an_engine_that_stays_away_past_the_wait_fails_the_job_as_executor_unavailable(
        alice, job_work_root, settings, short_tmp, served_models):
    settings.DOCKER_HOST = f"unix://{short_tmp}/no-engine-here.sock"
    settings.JOB_ENGINE_WAIT_SECONDS = 2
    job = make_job(alice, "def handler(event, context):\n    return 1\n")
    started = time.monotonic()
    run_in_thread(job.pk).join(30)
    job.refresh_from_db()
    assert (job.status, job.error_code) == ("failed", "executor_unavailable")
    assert 1.5 <= time.monotonic() - started < 15
