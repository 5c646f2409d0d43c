"""What a person reads: aligned tables and short summaries; and the progress line shown while waiting."""
from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], out: TextIO = sys.stdout) -> None:
    """`rows` as a table of `columns` (key, heading); an empty list says so."""
    if not rows:
        print("(none)", file=out)
        return
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(heading), *(len(line[i]) for line in cells)) for i, (_, heading) in enumerate(columns)]
    print("  ".join(heading.ljust(width) for (_, heading), width in zip(columns, widths)).rstrip(), file=out)
    for line in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip(), file=out)


def fields(pairs: Sequence[tuple[str, Any]], out: TextIO = sys.stdout) -> None:
    """Name: value lines, aligned; values that are None are left out."""
    shown = [(name, value) for name, value in pairs if value is not None and value != ""]
    width = max((len(name) for name, _ in shown), default=0)
    for name, value in shown:
        print(f"{name + ':':<{width + 1}} {_cell(value)}", file=out)


def as_json(value: Any, out: TextIO = sys.stdout) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False), file=out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


class Progress:
    """A spinner with what we wait for and for how long, on stderr, redrawn in place; only on a terminal (a script
    reading our output must never see it)."""

    FRAMES = "|/-\\"

    def __init__(self, stream: TextIO = sys.stderr):
        self.stream = stream
        self.enabled = stream.isatty()
        self.started = time.monotonic()
        self._frames = itertools.cycle(self.FRAMES)
        self._width = 0

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        line = f"{next(self._frames)} {text} ({time.monotonic() - self.started:.1f} s)"
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)

    def done(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
