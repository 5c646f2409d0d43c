"""Validation of uploaded function code, and the normalised zip it is stored as.

Code arrives as the text of its entry file, as that file, or as a zip holding it (and other modules): `main.py` for
the python runtime, `index.js` (or `main.js`) for node. What we store is always a zip that we wrote ourselves from
checked members, so a hostile archive's quirks (links, odd paths, huge headers) never reach the worker.

Python is parsed on the host in a bounded child (jobs.syntax_check); JavaScript is not checked here, because no
JavaScript parser runs on the host without running Node on a user's upload: a syntax error in a node function is
the job's `script_error`, reported by the container's runtime.
"""
import hashlib
import io
import stat
import zipfile
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

from django.conf import settings

from core.errors import DomainError, TooLarge

from .models import Runtime
from .syntax_check import find_syntax_error

ENTRY_POINT = "main.py"
# The entry files of each runtime, in order of preference (the runtime runs the first it finds).
ENTRY_POINTS: dict[str, tuple[str, ...]] = {Runtime.PYTHON: (ENTRY_POINT,), Runtime.NODE: ("index.js", "main.js")}
REQUIREMENTS_FILE = "requirements.txt"


class CodeRejected(DomainError):
    code = "invalid_code"


@dataclass(frozen=True)
class CodeArchive:
    data: bytes
    sha256: str
    files: list[str]
    unpacked_bytes: int
    runtime: str = Runtime.PYTHON
    # The upload's requirements.txt (at its top level), unchecked: jobs.requirements judges it.
    requirements: bytes | None = None
    # A node upload's package.json and package-lock.json (at its top level), unchecked: jobs.node_packages judges them.
    package_json: bytes | None = None
    package_lock: bytes | None = None


def build_archive(content: bytes, filename: str = ENTRY_POINT, runtime: str | None = None) -> CodeArchive:
    """Check an upload for `runtime` (None: the upload's own, see `runtime_of`) and return the archive to store.

    Raises `TooLarge` (code_too_large) past FUNCTION_MAX_CODE_BYTES, and `CodeRejected` with codes
    bad_zip, unsafe_path, zip_link, too_many_files, missing_main, not_utf8, syntax_error or invalid_runtime.
    """
    if len(content) > settings.FUNCTION_MAX_CODE_BYTES:
        raise TooLarge(f"Code is larger than {settings.FUNCTION_MAX_CODE_BYTES} bytes.", code="code_too_large")
    if runtime is not None and runtime not in ENTRY_POINTS:
        raise CodeRejected(f"Unknown runtime {runtime!r}; use one of {', '.join(ENTRY_POINTS)}.",
                           code="invalid_runtime")
    if filename.lower().endswith(".zip") or content[:4] == b"PK\x03\x04":
        members = _read_zip(content)
        runtime = runtime or runtime_of(members)
    else:
        runtime = runtime or (Runtime.NODE if filename.endswith(".js") else Runtime.PYTHON)
        entries = ENTRY_POINTS[runtime]
        members = {filename if filename in entries else entries[0]: content}
    if not any(name in members for name in ENTRY_POINTS[runtime]):
        raise CodeRejected(f"The code of a {runtime} function must contain {' or '.join(ENTRY_POINTS[runtime])} "
                           "at its top level.", code="missing_main")
    if runtime == Runtime.PYTHON:
        _check_python({name: data for name, data in members.items() if name.endswith(".py")})
    else:
        _decode({name: data for name, data in members.items() if name.endswith((".js", ".mjs", ".cjs"))})
    return replace(_write_zip(members), runtime=runtime, requirements=members.get(REQUIREMENTS_FILE),
                   package_json=members.get("package.json"), package_lock=members.get("package-lock.json"))


def runtime_of(members: dict[str, bytes]) -> str:
    """The runtime an upload's files ask for: node when it holds a node entry file and no main.py, else python."""
    if ENTRY_POINT not in members and any(name in members for name in ENTRY_POINTS[Runtime.NODE]):
        return Runtime.NODE
    return Runtime.PYTHON


def _read_zip(content: bytes) -> dict[str, bytes]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise CodeRejected(f"Not a readable zip file: {exc}.", code="bad_zip") from None
    files = [info for info in infos if not info.is_dir()]
    if len(files) > settings.FUNCTION_MAX_FILES:
        raise CodeRejected(f"The zip holds more than {settings.FUNCTION_MAX_FILES} files.", code="too_many_files")
    # Trust no header: sum the declared sizes first, then count what really comes out while reading.
    if sum(info.file_size for info in files) > settings.FUNCTION_MAX_UNPACKED_BYTES:
        raise TooLarge("The zip unpacks to more than the allowed size.", code="code_too_large")
    members: dict[str, bytes] = {}
    budget = settings.FUNCTION_MAX_UNPACKED_BYTES
    for info in files:
        name = _safe_member_name(info)
        try:
            with archive.open(info) as member:
                data = member.read(budget + 1)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, ValueError) as exc:
            raise CodeRejected(f"Cannot read {info.filename!r} from the zip: {exc}.", code="bad_zip") from None
        budget -= len(data)
        if budget < 0:
            raise TooLarge("The zip unpacks to more than the allowed size.", code="code_too_large")
        members[name] = data
    return _strip_common_folder(members)


def _safe_member_name(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise CodeRejected(f"The zip holds a link ({info.filename!r}); links are refused.", code="zip_link")
    path = PurePosixPath(info.filename.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or not path.parts or ":" in info.filename:
        raise CodeRejected(f"Unsafe path in the zip: {info.filename!r}.", code="unsafe_path")
    return path.as_posix()


def _strip_common_folder(members: dict[str, bytes]) -> dict[str, bytes]:
    """A zip made by zipping a folder puts everything under `folder/`; accept it as if it were the top."""
    if any(name in members for entries in ENTRY_POINTS.values() for name in entries) or not members:
        return members
    tops = {name.split("/", 1)[0] for name in members}
    if len(tops) == 1 and all("/" in name for name in members):
        prefix = tops.pop() + "/"
        return {name[len(prefix):]: data for name, data in members.items()}
    return members


def _check_python(modules: dict[str, bytes]) -> None:
    """Refuse modules that are not UTF-8, or whose syntax is wrong (as far as the bounded check can tell)."""
    problem = find_syntax_error(_decode(modules))
    if problem is not None:
        raise CodeRejected(f"{problem.file} line {problem.line}: {problem.message}.", code="syntax_error",
                           line=problem.line, file=problem.file)


def _decode(modules: dict[str, bytes]) -> dict[str, str]:
    """The text of `modules`; raises CodeRejected (not_utf8) for one that is not UTF-8."""
    sources = {}
    for name, data in modules.items():
        try:
            sources[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            raise CodeRejected(f"{name} is not UTF-8 text.", code="not_utf8") from None
    return sources


def _write_zip(members: dict[str, bytes]) -> CodeArchive:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(members):
            # A fixed date keeps the archive (and its hash) the same for the same files.
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, members[name], compress_type=zipfile.ZIP_DEFLATED)
    data = buffer.getvalue()
    return CodeArchive(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        files=sorted(members),
        unpacked_bytes=sum(len(d) for d in members.values()),
    )


def extract_archive(data: bytes, target: str) -> None:
    """Unpack a stored archive (written by `_write_zip`, so its names are already safe) into `target`."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(target)
