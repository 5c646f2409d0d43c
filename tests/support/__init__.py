"""Helpers for the tests: plain functions and classes, imported by name from the module of their concern
(`from tests.support.jobs import deploy`).

Fixtures live in tests/fixtures/ (registered in tests/conftest.py); what a test calls itself lives here. Nothing here
mocks Docker, the broker or the database.

- accounts: users, one API key of theirs and an API client; the models the catalogue says a node serves.
- jobs: zips, deployed functions, submitted and queued jobs, a job run by the real runner in a thread.
- waiting: waiting for a condition, for a job's status, and how long a warm pool may take.
- brokers: the filesystem and SQS (moto_server) brokers as both sides see them; pointing Celery at one.
- workers: real `celery worker` processes on the test database.
- containers: what the Docker engine did for a job, warm pools of real containers, one direction of a TCP relay.
- browser: how a real Chromium is started and waited for, and the text of an element.
- nodes: a listening socket and a TCP relay to a real AI node, which a test can take down mid-way.
"""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = REPO_ROOT / ".venv" / "bin"

