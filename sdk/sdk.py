"""Helpers for a job's script: its context, its input and its output. Standard library only.

    import sdk
    event = sdk.get_input()
    sdk.return_output({"answer": 42})
"""
from __future__ import annotations

import json
import os

# `typing` costs every job's start more CPU than a trivial script does; annotations are not evaluated here, and
# type checkers read this name as typing.TYPE_CHECKING.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_UNSET = object()
_output: Any = _UNSET


def get_context() -> dict[str, Any]:
    """Who and what this job is: ids, the model it may use, and where it may write."""
    return {
        "jobId": os.environ.get("JOB_ID", ""),
        "functionId": os.environ.get("FUNCTION_ID", ""),
        "modelId": os.environ.get("LLM_MODEL", ""),
        "aiEndpoint": os.environ.get("AI_ENDPOINT", ""),
        "outputDir": os.environ.get("OUTPUT_DIR", "/job/out"),
    }


def get_input() -> Any:
    """The job's inputData, decoded from PAYLOAD, or from PAYLOAD_FILE when it was too large for the environment."""
    path = os.environ.get("PAYLOAD_FILE")
    if path:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    raw = os.environ.get("PAYLOAD")
    return None if raw is None else json.loads(raw)


def return_output(value: Any) -> None:
    """Set the job's result (JSON). A value returned by handler()/main() takes precedence."""
    global _output
    _output = value


def has_output() -> bool:
    return _output is not _UNSET


def get_output() -> Any:
    return None if _output is _UNSET else _output
