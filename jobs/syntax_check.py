"""The syntax check of uploaded Python, run in a child process bounded in memory and time.

Parsing is far costlier than the text it reads: 5 MB of `a=1` lines took 3.1 GB of memory and 22 s of CPU in
the web process. The check therefore runs in a short-lived child of our own (`python -I -S`) that limits itself
(RLIMIT_AS, RLIMIT_CPU) before it reads a byte, and that the web process kills at a wall-clock deadline. When the
check cannot finish within those bounds the upload is not refused: its syntax is left to the job container, whose
runtime reports a SyntaxError as the job's error (inside the job's own memory and time limits).
"""
from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass

from django.conf import settings

logger = logging.getLogger(__name__)

# At most this many checks run at once in one web process; a request that cannot get a turn within the deadline
# is left unchecked rather than queued, so that a flood of uploads cannot pile up children.
MAX_PARALLEL_CHECKS = 2
_turns = threading.BoundedSemaphore(MAX_PARALLEL_CHECKS)

# The child: limits itself first, then reads length-prefixed (name, source) pairs from stdin and prints one JSON
# line: {"ok": true}, the first syntax error, or why it could not finish.
_CHILD = r"""
import ast, json, resource, struct, sys
memory, cpu = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
def answer(value):
    sys.stdout.write(json.dumps(value))
    sys.stdout.flush()
    raise SystemExit(0)
try:
    data = sys.stdin.buffer.read()
    position = 0
    while position < len(data):
        (name_length,) = struct.unpack_from(">I", data, position)
        name = data[position + 4:position + 4 + name_length].decode()
        position += 4 + name_length
        (source_length,) = struct.unpack_from(">I", data, position)
        source = data[position + 4:position + 4 + source_length].decode()
        position += 4 + source_length
        try:
            ast.parse(source, filename=name)
        except SyntaxError as exc:
            answer({"file": name, "line": exc.lineno, "message": str(exc.msg)})
        except ValueError as exc:  # Python 3.11 refuses NUL characters with ValueError, not SyntaxError
            answer({"file": name, "line": None, "message": str(exc)})
    answer({"ok": True})
except (MemoryError, RecursionError) as exc:
    answer({"unchecked": type(exc).__name__})
"""


@dataclass(frozen=True)
class SyntaxProblem:
    file: str
    line: int | None
    message: str


def find_syntax_error(sources: dict[str, str]) -> SyntaxProblem | None:
    """The first syntax error in `sources` (file name -> Python text), or None.

    None also when the check could not finish within FUNCTION_SYNTAX_CHECK_MEMORY_MB and
    FUNCTION_SYNTAX_CHECK_SECONDS (or no turn was free in time): that is logged, and the container decides.
    """
    if not sources:
        return None
    deadline = settings.FUNCTION_SYNTAX_CHECK_SECONDS
    if not _turns.acquire(timeout=deadline):
        logger.warning("syntax check skipped: %d checks already running", MAX_PARALLEL_CHECKS)
        return None
    try:
        answer = _run_child(_frames(sources), deadline)
    finally:
        _turns.release()
    if "file" in answer:
        return SyntaxProblem(file=str(answer["file"]), line=answer.get("line"), message=str(answer["message"]))
    if not answer.get("ok"):
        logger.warning("syntax check of %d files (%d bytes) left to the container: %s", len(sources),
                       sum(len(s) for s in sources.values()), answer.get("unchecked"))
    return None


def _frames(sources: dict[str, str]) -> bytes:
    parts = []
    for name, source in sources.items():
        for item in (name.encode(), source.encode()):
            parts += [struct.pack(">I", len(item)), item]
    return b"".join(parts)


def _run_child(data: bytes, deadline: float) -> dict:
    memory = settings.FUNCTION_SYNTAX_CHECK_MEMORY_MB * 1024 * 1024
    cpu = max(1, int(deadline))
    # -I: no environment variables, no user site, no current folder on the path; -S: no site module at all.
    command = [sys.executable, "-I", "-S", "-c", _CHILD, str(memory), str(cpu)]
    # An empty environment: the child needs none, and it has no business seeing the web process's secrets.
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={})
    try:
        stdout, stderr = child.communicate(data, timeout=deadline)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return {"unchecked": f"no answer within {deadline} s"}
    try:
        answer = json.loads(stdout)
    except ValueError:
        # Killed by its own limits (SIGKILL past RLIMIT_CPU's hard limit, or a failed allocation outside Python).
        return {"unchecked": f"exit {child.returncode}: {stderr[-200:].decode(errors='replace')}"}
    return answer if isinstance(answer, dict) else {"unchecked": "unreadable answer"}
