"""Entry point of the job container: runs the user's main.py under the original container contract.

- main.py defining `handler(event, context)` (or `main(event, context)`) is imported as a module and that
  function is called with the job's input; its return value (or `sdk.return_output(...)`) is the result.
- Any other main.py runs as a plain script (`__name__ == "__main__"`).
The result and, on failure, the exception are reported to the job gateway; the traceback goes to stderr.
"""
from __future__ import annotations

import _ast
import json
import os
import resource
import socket
import sys
import types

import sdk

# What a job's start imports is CPU that every job pays, and the engine's own work per container is about as much:
# `ast`, `runpy`, `inspect`, `asyncio`, `traceback` and `http.client` (with the `email` package it loads) are
# imported only by the scripts that need them (`asyncio` for a coroutine, `traceback` for an error), or not at all.
TYPE_CHECKING = False  # type checkers read this name as typing.TYPE_CHECKING
if TYPE_CHECKING:
    from typing import Any

CODE_DIR = os.environ.get("CODE_DIR", "/job/code")
ENTRY_NAMES = ("handler", "main")
_CO_VARARGS = 0x04  # inspect.CO_VARARGS
# The job's gateway socket, where the host mounts it: transport.DEFAULT_SOCKET (transport loads http.client).
GATEWAY_SOCKET = "/run/ainode/gateway.sock"


def load_script(path: str) -> tuple[types.CodeType, str | None]:
    """The script compiled, and the name of the function to call (found without running the script), or None for
    a plain script. One parse serves both (`ast.parse` is this `compile`, without loading the `ast` module)."""
    with open(path, "rb") as handle:
        tree = compile(handle.read(), path, "exec", _ast.PyCF_ONLY_AST, dont_inherit=True)
    defined = {node.name for node in tree.body if isinstance(node, (_ast.FunctionDef, _ast.AsyncFunctionDef))}
    code = compile(tree, path, "exec", dont_inherit=True)
    return code, next((name for name in ENTRY_NAMES if name in defined), None)


def execute(code: types.CodeType, path: str, run_name: str) -> dict[str, Any]:
    """Run the script's code as the module `run_name` (as `runpy.run_path` would, but the module stays in
    sys.modules, so that what the script defines can be found by its module's name while its function runs)."""
    module = types.ModuleType(run_name)
    module.__file__ = path
    module.__loader__ = module.__spec__ = None
    module.__package__ = ""
    module.__cached__ = None
    sys.modules[run_name] = module
    exec(code, module.__dict__)
    return module.__dict__


def positional_count(function: Any) -> int | None:
    """How many positional arguments `function` takes; None when it takes any number."""
    code = getattr(function, "__code__", None)
    if type(function) is types.FunctionType and not hasattr(function, "__wrapped__") and code is not None:
        return None if code.co_flags & _CO_VARARGS else code.co_argcount
    import inspect  # a decorated or otherwise wrapped entry function: let inspect follow it

    parameters = inspect.signature(function).parameters.values()
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)


def call_entry(function: Any, event: Any, context: dict[str, Any]) -> Any:
    count = positional_count(function)
    value = function(*(event, context)[:count])
    if isinstance(value, types.CoroutineType):
        import asyncio

        value = asyncio.run(value)
    return value


def run_script(path: str, event: Any, context: dict[str, Any]) -> Any:
    code, name = load_script(path)
    if name is None:
        execute(code, path, "__main__")
        return sdk.get_output()
    value = call_entry(execute(code, path, "main")[name], event, context)
    return value if value is not None or not sdk.has_output() else sdk.get_output()


def peak_memory_bytes() -> int:
    # ru_maxrss is in kilobytes on Linux.
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) * 1024


def report(result: Any, error: dict[str, Any] | None) -> bool:
    """Post the script's end to the gateway; False when the result is not JSON (reported as an error instead)."""
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
        status, answer = post_to_gateway("/_job/result", body.encode())
        if status != 200:
            print(f"[runtime] the result was refused: {answer.decode(errors='replace')}", file=sys.stderr)
    except OSError as exc:
        print(f"[runtime] could not report the result: {exc}", file=sys.stderr)
    return is_json


def post_to_gateway(path: str, body: bytes, timeout: float = 30) -> tuple[int, bytes]:
    """POST a JSON body to the gateway and return the answer's status and body: one HTTP/1.1 request on a
    connection of its own, read to its end (the gateway closes it, as asked). Always the mounted socket itself,
    never an address from the environment, which the script may have changed."""
    head = (f"POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    chunks = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(GATEWAY_SOCKET)
        connection.sendall(head + body)
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    status_line, _, rest = b"".join(chunks).partition(b"\r\n")
    version, _, status = status_line.partition(b" ")
    if not version.startswith(b"HTTP/") or not status[:3].isdigit():
        raise OSError(f"the gateway's answer is not HTTP: {status_line[:80]!r}")
    return int(status[:3]), rest.partition(b"\r\n\r\n")[2]


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
        import traceback

        traceback.print_exc()
        error = {"type": type(exc).__name__, "message": str(exc)[:2000]}
        exit_code = 1
    sys.stdout.flush()
    if not report(result, error) and exit_code == 0:
        exit_code = 1
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
