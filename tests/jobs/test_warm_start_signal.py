"""A warm container's readiness and start signal. Ready means its runtime holds the slot's start FIFO open; a
container that stopped first is given up at once. The worker writes the job's environment to that FIFO, whose name
is gone before the runtime has a byte of it, so the script it then starts never finds the FIFO
(tests/jobs/test_warm_pool.py checks this from inside a real container, where it is a race)."""
import json
import os
import threading
import time

from jobs.sandbox.spec import default_profile
from jobs.sandbox.warm_pool import Slot


def test_the_start_fifo_is_gone_before_the_runtime_reads_the_first_byte_of_its_job(tmp_path):
    (tmp_path / "run").mkdir()
    slot = Slot(container_id="not-a-container", path=tmp_path, profile=default_profile())
    os.mkfifo(slot.fifo)
    runtime_end = os.open(slot.fifo, os.O_RDWR)  # as sdk/warm.py holds it while it waits
    seen: dict = {}

    def runtime() -> None:
        data = os.read(runtime_end, 1)
        seen["fifo_there"] = slot.fifo.exists()
        while not data.endswith(b"\n"):
            data += os.read(runtime_end, 65536)
        seen["env"] = json.loads(data)

    reader = threading.Thread(target=runtime, daemon=True)
    reader.start()
    # Far larger than a pipe's buffer: the worker cannot have written it all (and so finished `begin`) before the
    # runtime has read most of it.
    env = {"JOB_ID": "one", "PAYLOAD": "x" * (1 << 20)}
    try:
        slot.begin(env, is_running=lambda: True)
        reader.join(10)
    finally:
        os.close(runtime_end)
    assert seen == {"fifo_there": False, "env": env}


def test_a_container_that_stopped_before_its_runtime_was_ready_is_given_up_at_once(tmp_path):
    (tmp_path / "run").mkdir()
    slot = Slot(container_id="not-a-container", path=tmp_path, profile=default_profile())
    os.mkfifo(slot.fifo)  # nobody will ever hold it open: the runtime died before it got there
    started = time.monotonic()

    assert slot.wait_ready(30, is_running=lambda: False) is False
    assert time.monotonic() - started < 5


def test_a_runtime_that_reaches_its_fifo_is_ready(tmp_path):
    (tmp_path / "run").mkdir()
    slot = Slot(container_id="not-a-container", path=tmp_path, profile=default_profile())
    os.mkfifo(slot.fifo)
    runtime_end = os.open(slot.fifo, os.O_RDWR)
    try:
        assert slot.wait_ready(30, is_running=lambda: True) is True
    finally:
        os.close(runtime_end)
