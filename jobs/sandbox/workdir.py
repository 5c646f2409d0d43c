"""A job's folders on the host: the work root's safety check, and each job's code, input and run folders.

The worker (root in production) writes tenants' code and input here, and the job's gateway listens here. So:
- JOB_WORK_ROOT must be a real folder (not a link) owned by the worker's uid that no other user can write to, in a
  parent that others cannot rename it out of (not writable by others, or sticky like /tmp). A missing root is
  created 0700. Anything else is refused with `WorkdirError` (job error code `work_root_unsafe`), never used.
- A job's folders are made relative to the opened root (`dir_fd`), with `O_NOFOLLOW` on every open: a link
  planted anywhere is refused, never followed. A job folder that already exists is refused too.
- Modes: the job folder 0700; `code` and `input` 0750 and their files 0640, owner the worker, group 10001 (the
  container's user); `run` (the gateway socket's folder) 0750 with the same group, the socket 0660. Other local
  users can neither read a tenant's code or input nor reach a job's gateway.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .runtime_user import RUNTIME_GID

logger = logging.getLogger(__name__)

JOB_DIR_MODE = 0o700
SHARED_DIR_MODE = 0o750
SHARED_FILE_MODE = 0o640
SOCKET_MODE = 0o660
# The errors of a full filesystem, and of a full quota.
_FULL = (errno.ENOSPC, errno.EDQUOT)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class WorkdirError(Exception):
    """The job's folders cannot be made safely, or at all. `code` is a job error code."""

    def __init__(self, message: str, *, code: str = "work_root_unsafe"):
        super().__init__(message)
        self.code = code


@contextmanager
def disk_space_checked(path: Path) -> Iterator[None]:
    """Turns a write under `path` that found its filesystem (or the worker's quota) full into WorkdirError
    `work_disk_full`: the job fails with a clear code before its script ran, and the worker goes on serving."""
    try:
        yield
    except shutil.Error as exc:  # copytree gathers its files' errors as text: (source, target, str(why)) each
        if not any(f"[Errno {number}]" in why for _, _, why in exc.args[0] for number in _FULL):
            raise
        _disk_full(path)
    except OSError as exc:
        if exc.errno not in _FULL:
            raise
        _disk_full(path)


def _disk_full(path: Path) -> None:
    logger.error("no space left under %s for a job's files", path)
    # The tenant's message names no host path (the log does).
    raise WorkdirError("The worker has no disk space left for the job's files.", code="work_disk_full") from None


@dataclass(frozen=True)
class JobFolders:
    path: Path
    code: Path
    input: Path
    run: Path
    sdk: Path


def create_job_folders(root: Path, name: str) -> JobFolders:
    """Make `root`/`name` with its code, input, run and sdk folders; raises WorkdirError when that is not safe."""
    path = create_shared_folders(root, name, ("code", "input", "run", "sdk"))
    return JobFolders(path=path, code=path / "code", input=path / "input", run=path / "run", sdk=path / "sdk")


def create_shared_folders(root: Path, name: str, subfolders: tuple[str, ...],
                          modes: dict[str, int] | None = None) -> Path:
    """Make `root`/`name` (0700) with `subfolders` shared with the container's group (SHARED_DIR_MODE, or the mode
    `modes` gives one); returns its path. Raises WorkdirError when that is not safe, or when it already exists."""
    root_fd = _open_work_root(root)
    try:
        try:
            os.mkdir(name, JOB_DIR_MODE, dir_fd=root_fd)
        except FileExistsError:
            raise WorkdirError(f"The job folder {root / name} already exists; it is never reused.") from None
        job_fd = os.open(name, _DIR_FLAGS, dir_fd=root_fd)
    finally:
        os.close(root_fd)
    try:
        os.fchmod(job_fd, JOB_DIR_MODE)
        for sub in subfolders:
            os.mkdir(sub, JOB_DIR_MODE, dir_fd=job_fd)
            sub_fd = os.open(sub, _DIR_FLAGS, dir_fd=job_fd)
            try:
                share_with_runtime(sub_fd, (modes or {}).get(sub, SHARED_DIR_MODE))
            finally:
                os.close(sub_fd)
    finally:
        os.close(job_fd)
    return root / name


def share_tree(folder: Path) -> None:
    """Give every folder and file under `folder` (extracted by us) the shared modes, following no link."""
    for parent, dirs, files in os.walk(folder):
        for entry, mode in [(d, SHARED_DIR_MODE) for d in dirs] + [(f, SHARED_FILE_MODE) for f in files]:
            fd = os.open(os.path.join(parent, entry), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                share_with_runtime(fd, mode)
            finally:
                os.close(fd)


def write_shared_file(folder: Path, name: str, data: bytes) -> None:
    """Create `folder`/`name` (it must not exist; a link there is refused) with the shared file mode."""
    fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as file:
        share_with_runtime(fd, SHARED_FILE_MODE)
        file.write(data)


def share_socket(path: Path) -> None:
    """The gateway's socket: reachable by the container's group only (the socket cannot be opened: no fd)."""
    try:
        os.chown(path, os.geteuid(), RUNTIME_GID, follow_symlinks=False)
    except PermissionError:
        os.chmod(path, 0o666, follow_symlinks=False)  # a worker that is not root: see share_with_runtime
        return
    os.chmod(path, SOCKET_MODE, follow_symlinks=False)


def share_with_runtime(fd: int, mode: int) -> None:
    """Owner the worker, group the container's user, `mode`. A worker that is not root cannot give its files to
    group 10001: it then opens them to every user (as a development machine needs), and says so."""
    try:
        os.fchown(fd, os.geteuid(), RUNTIME_GID)
    except PermissionError:
        _warn_not_root()
        mode |= (mode & 0o070) >> 3
    os.fchmod(fd, mode)


_warned = False


def _warn_not_root() -> None:
    global _warned
    if not _warned:
        _warned = True
        logger.warning("the worker is not root: job folders are readable by every local user (group %d needs "
                       "root to give)", RUNTIME_GID)


def _open_work_root(root: Path) -> int:
    """The root, opened without following links and checked on the opened folder itself (no race)."""
    _check_parent(root.parent)
    try:
        fd = os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        root.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(root, 0o700)
        except FileExistsError:  # made meanwhile by someone else: the checks below judge it
            pass
        fd = _open_no_follow(root)
    except OSError as exc:
        raise WorkdirError(_unsafe(root, _why_not_opened(exc))) from None
    try:
        _check_root(root, os.fstat(fd))
    except WorkdirError:
        os.close(fd)
        raise
    return fd


def _open_no_follow(root: Path) -> int:
    try:
        return os.open(root, _DIR_FLAGS)
    except OSError as exc:
        raise WorkdirError(_unsafe(root, _why_not_opened(exc))) from None


def _why_not_opened(exc: OSError) -> str:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return "a link or not a folder"
    return f"not usable ({exc.strerror})"


def _check_root(root: Path, info: os.stat_result) -> None:
    if info.st_uid != os.geteuid():
        raise WorkdirError(_unsafe(root, f"owned by uid {info.st_uid}"))
    if info.st_mode & 0o022:
        raise WorkdirError(_unsafe(root, f"writable by other users (mode {stat.S_IMODE(info.st_mode):o})"))


def _check_parent(parent: Path) -> None:
    """Every folder above the root, as written and as resolved, must be one no other user can change: owned by root
    or by us, and writable by others only with the sticky bit (like /tmp). Otherwise another user could swap a
    folder (or a link) on the way for one of theirs, and the writes that go by path (the code's extraction, the SDK's
    copy, the engine's bind mounts) would land in it."""
    chains = [Path(os.path.abspath(parent)), Path(os.path.realpath(parent))]
    for folder in {ancestor for chain in chains for ancestor in (chain, *chain.parents)}:
        try:
            info = os.lstat(folder)
        except FileNotFoundError:
            continue  # created below, by us
        if info.st_uid not in (0, os.geteuid()):
            raise WorkdirError(f"JOB_WORK_ROOT's ancestor {folder} belongs to uid {info.st_uid}, who could swap it "
                               f"(or what is in it) for a folder of theirs. Use another place.")
        if stat.S_ISDIR(info.st_mode) and info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            raise WorkdirError(f"JOB_WORK_ROOT's ancestor {folder} is writable by other users without the sticky "
                               f"bit: another user could swap what is in it for a folder of theirs. Use another "
                               f"place.")


def _unsafe(path: Path, problem: str) -> str:
    return (f"JOB_WORK_ROOT {path} is {problem}; it must be a folder owned by uid {os.geteuid()} that no other user "
            f"can write to (e.g. mode 700), in a folder others cannot write to (or a sticky one, like /tmp).")
