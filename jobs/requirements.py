"""A function's requirements.txt: checked and normalised at deploy, before anything is fetched.

A line passes only when it names a package of the operator's index: `name[extras]`, optionally version clauses
(`==`, `>=`, `<=`, `~=`, `!=`, `<`, `>`, comma-separated), optionally `; markers`. Anything that would make pip
reach elsewhere or read other files is refused with `invalid_requirements` naming the line: options (`--index-url`,
`--extra-index-url`, `-f`/`--find-links`, `-e`, `-r`, `-c`, `--hash`, ...), URLs (`name @ https://...`,
`git+...`), local paths, environment variables (pip expands `${VAR}`) and line continuations. The index is the
operator's setting (pip's own configuration on the worker hosts), never the user's.

The normalised text (canonical names, sorted extras and clauses, one requirement a line, sorted, no duplicates) is
what a dependency layer's content address is made from, so two spellings of one set share one layer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from core.errors import DomainError

FILE_NAME = "requirements.txt"
MAX_TEXT_BYTES = 64 * 1024
MAX_REQUIREMENTS = 200
OPERATORS = frozenset({"==", ">=", "<=", "~=", "!=", "<", ">"})
_VCS = re.compile(r"^(git|hg|svn|bzr)\+", re.IGNORECASE)


class RequirementsRejected(DomainError):
    code = "invalid_requirements"


@dataclass(frozen=True)
class Requirements:
    """A checked requirements set: normalised lines, sorted and unique (empty: no dependencies)."""

    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "".join(f"{line}\n" for line in self.lines)

    def __bool__(self) -> bool:
        return bool(self.lines)


def parse_requirements(text: str | bytes) -> Requirements:
    """Check `text` (a requirements.txt) line by line and return its normalised set.

    Raises RequirementsRejected (`invalid_requirements`, with `line`: the 1-based line number, when one line is
    at fault) for text that is not UTF-8, is too large, or holds a line that is not a plain requirement.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise RequirementsRejected(f"{FILE_NAME} is not UTF-8 text.") from None
    if len(text.encode()) > MAX_TEXT_BYTES:
        raise RequirementsRejected(f"{FILE_NAME} is larger than {MAX_TEXT_BYTES} bytes.")
    lines = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.add(_normalised(line, number))
    if len(lines) > MAX_REQUIREMENTS:
        raise RequirementsRejected(f"{FILE_NAME} names more than {MAX_REQUIREMENTS} requirements.")
    return Requirements(tuple(sorted(lines)))


def _normalised(line: str, number: int) -> str:
    problem = _reaches_elsewhere(line)
    if problem:
        raise _rejected(number, line, problem)
    try:
        requirement = Requirement(line)
    except InvalidRequirement as exc:
        raise _rejected(number, line, f"not a requirement ({exc})") from None
    if requirement.url:
        raise _rejected(number, line, "URLs are refused; name a package of the index")
    odd = sorted({spec.operator for spec in requirement.specifier} - OPERATORS)
    if odd:
        raise _rejected(number, line, f"the operator {odd[0]} is refused; use one of {', '.join(sorted(OPERATORS))}")
    extras = ",".join(sorted(canonicalize_name(extra) for extra in requirement.extras))
    clauses = ",".join(sorted(str(spec) for spec in requirement.specifier))
    marker = f"; {requirement.marker}" if requirement.marker else ""
    return f"{canonicalize_name(requirement.name)}{f'[{extras}]' if extras else ''}{clauses}{marker}"


def _reaches_elsewhere(line: str) -> str | None:
    """Why `line` would make pip fetch from or read somewhere other than the operator's index; None if it would
    not. These are named before parsing, so that the error says what was refused rather than a syntax error."""
    if line.startswith("-"):
        return f"options are refused ({line.split()[0]}); the package index is the operator's setting"
    if " -" in line or "\t-" in line:
        return "options on a requirement's line are refused"
    if line.endswith("\\"):
        return "line continuations are refused; put each requirement on one line"
    if "$" in line:
        return "environment variables are refused"
    if "://" in line or _VCS.match(line) or "@" in line:
        return "URLs are refused; name a package of the index"
    if line.startswith((".", "~")) or "/" in line or "\\" in line:
        return "local paths are refused; name a package of the index"
    return None


def _rejected(number: int, line: str, problem: str) -> RequirementsRejected:
    return RequirementsRejected(f"{FILE_NAME} line {number} ({line!r}): {problem}.", line=number)
