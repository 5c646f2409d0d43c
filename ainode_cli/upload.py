"""What `ainode deploy` sends: a folder (zipped) or a file as a function's code, the runtime it asks for, and its
dependencies. Mistakes a user can fix (a missing entry file, a path that is not there) raise UsageError."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path


class UsageError(Exception):
    """A mistake on the command line that argparse cannot see (a missing file, input that is not JSON)."""


SKIPPED_PARTS = {"__pycache__", ".git", ".venv", "node_modules"}
# The entry files a folder may hold: main.py (python), index.js or main.js (node).
ENTRY_FILES = ("main.py", "index.js", "main.js")


def code_of(path: Path) -> bytes:
    """A folder zipped (it must hold main.py, index.js or main.js), or a file's bytes (one of those, or a zip)."""
    if path.is_dir():
        if not any((path / name).is_file() for name in ENTRY_FILES):
            raise UsageError(f"{path} has no {', '.join(ENTRY_FILES[:-1])} or {ENTRY_FILES[-1]}")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(path.rglob("*")):
                relative = file.relative_to(path)
                if file.is_file() and not SKIPPED_PARTS & set(relative.parts) and file.suffix != ".pyc":
                    archive.write(file, relative.as_posix())
        return buffer.getvalue()
    if path.is_file():
        return path.read_bytes()
    raise UsageError(f"{path}: no such file or folder")


def runtime_of(path: Path) -> str | None:
    """The runtime `path` asks for: node for a folder with index.js or main.js and no main.py, or a .js file; python
    for a folder with main.py or a .py file; None (the server's choice) for a zip."""
    if path.is_dir():
        return "python" if (path / "main.py").is_file() else "node"
    return {".js": "node", ".py": "python"}.get(path.suffix)


def requirements_of(path: Path, runtime: str | None = None) -> dict[str, str]:
    """The `requirements` field of a deploy of `path`: a folder's requirements.txt, or none for a file. A node
    folder's dependencies are its package.json and package-lock.json, in the zip: the field is sent (empty) only
    when it has no package.json, to remove them."""
    if not path.is_dir():
        return {}
    if runtime == "node":
        return {} if (path / "package.json").is_file() else {"requirements": ""}
    file = path / "requirements.txt"
    return {"requirements": file.read_text() if file.is_file() else ""}
