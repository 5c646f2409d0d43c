"""Trying again with growing pauses within a time limit: the one bookkeeping behind every wait for a dependency
that failed before anything was done (the Docker engine, the work root's disk, the database, a model's node)."""
from __future__ import annotations

import time
from collections.abc import Callable


class Backoff:
    """Pauses from `first` seconds, doubled after each up to `most`, for as long as a pause still ends within
    `seconds` from now."""

    def __init__(self, seconds: float, *, first: float, most: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.pause = first
        self.most = most

    def allows(self) -> bool:
        """Whether the next pause still ends within the limit."""
        return time.monotonic() + self.pause <= self.deadline

    def wait(self, sleep: Callable[[float], object] = time.sleep) -> object:
        """Take the next pause (with `sleep`, which may end it early and say so), then grow the one after it;
        returns what `sleep` returned."""
        slept = sleep(self.pause)
        self.pause = min(self.pause * 2, self.most)
        return slept
