"""Entry point of a warm job container: wait for one job, then run it exactly as runner.py would.

The worker starts this container ahead of demand. The runtime loads the runner, then blocks on the start FIFO in
the slot's socket folder. When a job is claimed, the worker puts its code and input in the slot, binds its
gateway's socket, and writes the job's environment (one JSON object) to the FIFO; the runtime takes it, becomes
that job, and exits with the script. The container serves this one job and is removed after it.

Standard library only: this file is mounted into the job container, which has nothing installed.
"""
import json
import os
import sys

import runner

START_FIFO = os.environ.get("AINODE_START_FIFO", "/run/ainode/start")


def wait_for_job() -> dict[str, str]:
    """Block until the worker writes the job's environment; an open and close with nothing written is ignored."""
    while True:
        with open(START_FIFO, "rb") as fifo:
            data = fifo.read()
        if data:
            env = json.loads(data)
            if not isinstance(env, dict):
                raise SystemExit("[runtime] the start signal is not a JSON object")
            return {str(key): str(value) for key, value in env.items()}


def main() -> int:
    env = wait_for_job()
    os.environ.pop("AINODE_START_FIFO", None)
    os.environ.update(env)
    return runner.main()


if __name__ == "__main__":
    sys.exit(main())
