"""Entry point of the job container: runs the user's main.py under the original container contract.

- main.py defining `handler(event, context)` (or `main(event, context)`) is imported as a module and that
  function is called with the job's input; its return value (or `sdk.return_output(...)`) is the result.
- Any other main.py runs as a plain script (`__name__ == "__main__"`).
The result and, on failure, the exception are reported to the job gateway; the traceback goes to stderr.
"""
import ast
import asyncio
import inspect
import json
import os
import resource
import runpy
import sys
import traceback
from typing import Any

import sdk
import transport

CODE_DIR = os.environ.get("CODE_DIR", "/job/code")
ENTRY_NAMES = ("handler", "main")


def entry_function(path: str) -> str | None:
    """The name of the function to call, found without running the script, or None for a plain script."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), filename=path)
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return next((name for name in ENTRY_NAMES if name in defined), None)


def call_entry(function: Any, event: Any, context: dict[str, Any]) -> Any:
    positional = [
        p for p in inspect.signature(function).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    takes_all = any(p.kind == p.VAR_POSITIONAL for p in positional)
    args = (event, context) if takes_all else (event, context)[: len(positional)]
    value = function(*args)
    if inspect.iscoroutine(value):
        value = asyncio.run(value)
    return value


def run_script(path: str, event: Any, context: dict[str, Any]) -> Any:
    name = entry_function(path)
    if name is None:
        runpy.run_path(path, run_name="__main__")
        return sdk.get_output()
    namespace = runpy.run_path(path, run_name="main")
    value = call_entry(namespace[name], event, context)
    return value if value is not None or not sdk.has_output() else sdk.get_output()


def peak_memory_bytes() -> int:
    # ru_maxrss is in kilobytes on Linux.
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) * 1024


def report(result: Any, error: dict[str, Any] | None) -> bool:
    """Post the script's end to the gateway; False when the result is not JSON (reported as an error instead)."""
    # The mounted socket itself, never an address from the environment, which the script may have changed.
    endpoint = f"unix://{transport.DEFAULT_SOCKET}"
    is_json = True
    try:
        # No `default=`: a result that is not JSON (a set, an object, NaN) must fail the job, not turn into its repr.
        body = json.dumps({"result": result, "error": error, "peakMemoryBytes": peak_memory_bytes()},
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        print(f"[runtime] the result is not JSON: {exc}", file=sys.stderr)
        is_json = False
        error = {"type": "ResultNotJSON", "message": str(exc)}
        body = json.dumps({"result": None, "error": error, "peakMemoryBytes": peak_memory_bytes()})
    try:
        connection, prefix = transport.connect(endpoint, timeout=30)
        connection.request("POST", prefix + "/_job/result", body.encode(), {"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = response.read()
        if response.status != 200:
            print(f"[runtime] the result was refused: {answer.decode(errors='replace')}", file=sys.stderr)
    except OSError as exc:
        print(f"[runtime] could not report the result: {exc}", file=sys.stderr)
    return is_json


def main() -> int:
    path = os.path.join(CODE_DIR, "main.py")
    sys.argv = [path]
    sys.path.insert(0, CODE_DIR)
    result: Any = None
    error: dict[str, Any] | None = None
    exit_code = 0
    try:
        event = sdk.get_input()
        result = run_script(path, event, sdk.get_context())
    except SystemExit as exc:
        if exc.code not in (None, 0):
            exit_code = exc.code if isinstance(exc.code, int) else 1
            if not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
            error = {"type": "SystemExit", "message": f"The script exited with {exc.code!r}."}
    except BaseException as exc:  # the user's script may raise anything; all of it is reported, none escapes
        traceback.print_exc()
        error = {"type": type(exc).__name__, "message": str(exc)[:2000]}
        exit_code = 1
    sys.stdout.flush()
    if not report(result, error) and exit_code == 0:
        exit_code = 1
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
