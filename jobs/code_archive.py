"""Validation of uploaded function code, and the normalised zip it is stored as.

Code arrives as the text of main.py, as a main.py file, or as a zip holding main.py (and other modules). What we
store is always a zip that we wrote ourselves from checked members, so a hostile archive's quirks (links, odd
paths, huge headers) never reach the worker.
"""
import hashlib
import io
import stat
import zipfile
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

from django.conf import settings

from core.errors import DomainError, TooLarge

from .syntax_check import find_syntax_error

ENTRY_POINT = "main.py"
REQUIREMENTS_FILE = "requirements.txt"


class CodeRejected(DomainError):
    code = "invalid_code"


@dataclass(frozen=True)
class CodeArchive:
    data: bytes
    sha256: str
    files: list[str]
    unpacked_bytes: int
    # The upload's requirements.txt (at its top level), unchecked: jobs.requirements judges it.
    requirements: bytes | None = None


def build_archive(content: bytes, filename: str = ENTRY_POINT) -> CodeArchive:
    """Check an upload and return the archive to store.

    Raises `TooLarge` (code_too_large) past FUNCTION_MAX_CODE_BYTES, and `CodeRejected` with codes
    bad_zip, unsafe_path, zip_link, too_many_files, missing_main, not_utf8 or syntax_error.
    """
    if len(content) > settings.FUNCTION_MAX_CODE_BYTES:
        raise TooLarge(f"Code is larger than {settings.FUNCTION_MAX_CODE_BYTES} bytes.", code="code_too_large")
    if filename.lower().endswith(".zip") or content[:4] == b"PK\x03\x04":
        members = _read_zip(content)
    else:
        members = {ENTRY_POINT: content}
    if ENTRY_POINT not in members:
        raise CodeRejected("The code must contain main.py at its top level.", code="missing_main")
    _check_python({name: data for name, data in members.items() if name.endswith(".py")})
    return replace(_write_zip(members), requirements=members.get(REQUIREMENTS_FILE))


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
    if ENTRY_POINT in members or not members:
        return members
    tops = {name.split("/", 1)[0] for name in members}
    if len(tops) == 1 and all("/" in name for name in members):
        prefix = tops.pop() + "/"
        return {name[len(prefix):]: data for name, data in members.items()}
    return members


def _check_python(modules: dict[str, bytes]) -> None:
    """Refuse modules that are not UTF-8, or whose syntax is wrong (as far as the bounded check can tell)."""
    sources = {}
    for name, data in modules.items():
        try:
            sources[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            raise CodeRejected(f"{name} is not UTF-8 text.", code="not_utf8") from None
    problem = find_syntax_error(sources)
    if problem is not None:
        raise CodeRejected(f"{problem.file} line {problem.line}: {problem.message}.", code="syntax_error",
                           line=problem.line, file=problem.file)


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
