"""A worker's own probes: a liveness file its event loop keeps fresh, and its metrics on a port of its own."""
from __future__ import annotations

import time
import urllib.request

from tests.support.ports import free_port
from tests.support.waiting import wait_for


def test_a_worker_keeps_its_liveness_file_fresh_serves_metrics_and_removes_the_file_when_it_stops(
        worker, _isolated_broker, tmp_path):
    heartbeat = tmp_path / "alive"
    port = free_port()
    process = worker(_isolated_broker, WORKER_HEARTBEAT_FILE=str(heartbeat), WORKER_HEARTBEAT_SECONDS="1",
                     WORKER_METRICS_PORT=str(port))
    wait_for(heartbeat.exists, timeout=10, message="the liveness file")
    first = heartbeat.stat().st_mtime
    wait_for(lambda: heartbeat.stat().st_mtime > first, timeout=10, message="the liveness file to be touched again")

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "ainode_jobs_running" in text and "ainode_jobs_finished_total" in text

    process.stop()
    assert not heartbeat.exists()


def test_a_hung_worker_lets_its_liveness_file_go_stale(worker, _isolated_broker, tmp_path):
    import signal

    heartbeat = tmp_path / "alive"
    process = worker(_isolated_broker, WORKER_HEARTBEAT_FILE=str(heartbeat), WORKER_HEARTBEAT_SECONDS="1")
    wait_for(heartbeat.exists, timeout=10, message="the liveness file")
    process.process.send_signal(signal.SIGSTOP)  # hung, not dead: the process is there but does nothing
    try:
        stopped_at = heartbeat.stat().st_mtime
        time.sleep(3)
        assert heartbeat.stat().st_mtime == stopped_at
    finally:
        process.process.send_signal(signal.SIGCONT)
