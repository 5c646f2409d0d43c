"""Entry point of a warm job container: wait for one job, then run it exactly as runner.py would.

The worker starts this container ahead of demand. The runtime loads the runner, then blocks on the start FIFO in
the slot's socket folder. When a job is claimed, the worker puts its code and input in the slot, binds its
gateway's socket, and writes the job's environment (one JSON object) to the FIFO; the runtime takes it, becomes
that job, and exits with the script. The container serves this one job and is removed after it.

Standard library only: this file is mounted into the job container, which has nothing installed.
"""
import importlib
import json
import os
import sys

import runner

START_FIFO = os.environ.get("AINODE_START_FIFO", "/run/ainode/start")


def wait_for_job() -> dict[str, str]:
    """Block until the worker writes the job's environment: one JSON object on one line.

    The FIFO is held open for reading and writing, so that the worker's readiness probe (an open and close with
    nothing written) never ends the read, and a worker that finds it open knows this runtime is waiting.
    """
    fd = os.open(START_FIFO, os.O_RDWR)
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 65536)
        data += chunk
    os.close(fd)
    env = json.loads(data)
    if not isinstance(env, dict):
        raise SystemExit("[runtime] the start signal is not a JSON object")
    return {str(key): str(value) for key, value in env.items()}


def preload(names: str) -> None:
    """Import the dependency layer's top-level modules (comma-separated `names`) while no job is here yet, as a job
    of this container's profile would import them anyway: its own imports then cost nothing. A module that fails
    to import here is left for the job to import, and fail on, itself."""
    for name in filter(None, names.split(",")):
        try:
            importlib.import_module(name)
        except (Exception, SystemExit):
            sys.modules.pop(name, None)


def main() -> int:
    preload(os.environ.pop("AINODE_PRELOAD", ""))
    env = wait_for_job()
    os.environ.pop("AINODE_START_FIFO", None)
    os.environ.update(env)
    return runner.main()


if __name__ == "__main__":
    sys.exit(main())
