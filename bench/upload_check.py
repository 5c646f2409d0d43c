"""Benchmark: what the upload's syntax check costs the web process, for a main.py of `a=1` lines.

    .venv/bin/python bench/upload_check.py             # 5 MB
    .venv/bin/python bench/upload_check.py 2000000     # any size in bytes

Calls `build_archive` (the check every upload goes through) once and prints the web process's peak resident
memory and CPU time before and after, and the same for the checker child. Not part of the test run.
"""
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "infra_ainode.settings")

import django  # noqa: E402

django.setup()

from jobs.code_archive import build_archive  # noqa: E402


def usage() -> tuple[float, float, float, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return (own.ru_maxrss / 1024, own.ru_utime + own.ru_stime,
            children.ru_maxrss / 1024, children.ru_utime + children.ru_stime)


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 5 * 1024 * 1024
    code = b"a=1\n" * (size // 4)
    rss_before, cpu_before, _, child_cpu_before = usage()
    started = time.monotonic()
    try:
        build_archive(code)
        outcome = "accepted"
    except Exception as exc:  # a refusal is a result too
        outcome = f"refused ({getattr(exc, 'code', type(exc).__name__)})"
    rss_after, cpu_after, child_rss, child_cpu_after = usage()
    print(f"{len(code)} bytes of a=1: {outcome} in {time.monotonic() - started:.2f} s; web process peak RSS "
          f"{rss_before:.0f} -> {rss_after:.0f} MB, CPU {cpu_after - cpu_before:.2f} s; checker child peak RSS "
          f"{child_rss:.0f} MB, CPU {child_cpu_after - child_cpu_before:.2f} s")


if __name__ == "__main__":
    main()
