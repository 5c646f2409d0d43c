"""Dependency layers on a worker host: their build, and the host's cache of built layers that job containers mount.

The build of one layer (claimed with `jobs.dependencies.start_build`, so a redelivered message never builds twice):
1. the runtime image's Python and platform are asked of the image itself (a probe container);
2. `pip download --only-binary=:all:` for that Python and platform fetches the wheels into the build's folder on
   the host. Wheels only: nothing of a package runs on the host (an sdist would need its build code run). A package
   with no wheel fails the build, naming it. pip uses the host's own configuration (PIP_INDEX_URL, pip.conf): the
   index is the operator's, and requirements were checked at deploy (jobs.requirements) to name no other;
3. `wheel_install.py` runs in a container of the runtime image hardened as a job's (no network, read-only root,
   uid 10001, no capabilities, limits on memory, pids and time). It unpacks the wheels into a tmpfs of
   DEPENDENCY_LAYER_MAX_MB (a larger layer fills it and is refused), compiles them, and writes the layer's tar and
   manifest to the build's output folder, the only place it may write;
4. the tar is stored in the database, in chunks (`jobs.dependencies.finish_build`), and the held jobs are sent.

A node layer (a function's package.json and lockfile, jobs.node_packages) is built the same way, from step 2:
`npm ci --ignore-scripts` fetches and unpacks the packages the lockfile names into the build's folder on the host
(npm runs no package's code with --ignore-scripts; the registry is npm's own configuration, or
DEPENDENCY_NPM_REGISTRY), after a package the lockfile says has an install script was refused; then
`npm_install.py` copies them into the layer's node_modules in the same sandbox container, refusing a package that
declares an install step, and writes the layer as wheel_install.py does.

The host cache (DEPENDENCY_LAYER_DIR, by default JOB_WORK_ROOT/layers: a path the engine sees) holds one folder per
layer, extracted once from the database (regular files and folders only) under a temporary name and renamed into
place, so a half-made folder is never mounted. Job containers mount it read-only at /opt/layer.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from django.conf import settings
from packaging.requirements import Requirement

from core.errors import DomainError

from ..dependencies import abandon_build, fail_build, finish_build, start_build, sweep_layers
from ..models import DependencyLayer, DependencyLayerChunk, FunctionVersion, LayerStatus, Runtime
from ..node_packages import PACKAGE_JSON, PACKAGE_LOCK, NodePackages
from . import npm_install, wheel_install
from .docker_backend import ContainerError, ContainerSpec, DockerBackend
from .runtime_user import RUNTIME_GID, RUNTIME_UID, RUNTIME_USER
from .workdir import WorkdirError, create_shared_folders, share_tree, share_with_runtime

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
CHUNK_BYTES = 4 * MiB
MANIFEST_MAX_BYTES = MiB
LOG_MAX_BYTES = 256 * 1024
PROBE_SECONDS = 30
# A folder or file of the host cache with this in its name is being made; one older than this was abandoned.
TEMPORARY = ".tmp-"
TEMPORARY_MAX_AGE_SECONDS = 3600
CONTAINER_BUILD = "/build"
CONTAINER_LAYER = "/layer"
_NO_WHEEL = re.compile(r"No matching distribution found for (\S+)")
_NPM_NAME = re.compile(r"^(@[A-Za-z0-9][A-Za-z0-9._~-]*/)?[A-Za-z0-9][A-Za-z0-9._~-]*$")
_PROBE = ("import json, platform, sys; "
          "print(json.dumps([sys.implementation.name, *sys.version_info[:2], *platform.libc_ver(), platform.machine()]))")


class LayerBuildError(Exception):
    """The build failed for a reason its owner should read; `code` is the layer's error code."""

    def __init__(self, message: str, *, code: str = "dependency_build_failed", log: str = ""):
        super().__init__(message)
        self.code = code
        self.log = log


@dataclass(frozen=True)
class RuntimeTarget:
    """What the runtime image runs: the wheels fetched must fit it."""

    python: str  # "3.11"
    platforms: tuple[str, ...]
    image_id: str

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")


@dataclass(frozen=True)
class LocalLayer:
    """A ready layer extracted on this host: its folder, and the modules a warm container imports while it waits."""

    path: Path
    modules: tuple[str, ...]


# --- the build --------------------------------------------------------------------------------------------------

def build_layer(layer_id: int, *, backend: DockerBackend) -> None:
    """Build layer `layer_id` if it is building and no other worker has started it; its end (ready or failed) is
    recorded by jobs.dependencies. An engine that cannot be reached leaves the build to be asked for again."""
    layer = start_build(layer_id)
    if layer is None:
        logger.info("layer %s: not building, or started by another worker; nothing to do", layer_id)
        return
    deadline = time.monotonic() + settings.DEPENDENCY_BUILD_TIMEOUT
    log: list[str] = []
    folder: Path | None = None
    try:
        folder = create_shared_folders(settings.JOB_WORK_ROOT, f"build-{uuid.uuid4().hex}",
                                       ("installer", "fetched", "out"), modes={"out": 0o770})
        if layer.runtime == Runtime.NODE:
            image_id = backend.image_id(settings.JOB_RUNTIME_IMAGE)
            log.append(fetch_node_packages(NodePackages(layer.requirements), folder, deadline=deadline))
            installer, requested = npm_install, NodePackages(layer.requirements).requested
        else:
            target = runtime_target(backend)
            image_id = target.image_id
            log.append(fetch_wheels(layer.requirements, folder, target, deadline=deadline))
            installer = wheel_install
            requested = [Requirement(line).name for line in layer.requirements.splitlines() if line]
        manifest, output = install_in_sandbox(backend, layer, folder, installer=installer, requested=requested,
                                              deadline=deadline)
        log.append(output)
        _store(layer, folder / "out" / wheel_install.ARCHIVE, manifest, log="\n".join(log), image_id=image_id)
    except LayerBuildError as exc:
        fail_build(layer.pk, code=exc.code, log="\n".join([*log, exc.log, f"error: {exc}"]))
    except (ContainerError, WorkdirError) as exc:
        logger.error("layer %s: the build could not run (%s); it will be asked for again", layer.key[:12], exc)
        abandon_build(layer.pk)
    except Exception:
        logger.exception("layer %s: the build failed", layer.key[:12])
        fail_build(layer.pk, code="dependency_build_failed", log="\n".join([*log, "error: the worker failed while "
                                                                                  "building the layer."]))
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def runtime_target(backend: DockerBackend) -> RuntimeTarget:
    """The runtime image's Python version and platform tags, asked of the image in a sandbox container."""
    image_id = backend.image_id(settings.JOB_RUNTIME_IMAGE)
    outcome = backend.run(_sandbox_spec("probe", ["python3", "-I", "-c", _PROBE], binds={}, layer_mb=0,
                                        timeout=PROBE_SECONDS))
    try:
        implementation, major, minor, libc, libc_version, machine = json.loads(outcome.stdout)
        glibc_minor = int(libc_version.split(".")[1]) if libc == "glibc" else -1
    except (ValueError, TypeError, IndexError):
        raise ContainerError(f"The runtime image's Python could not be asked its version: {outcome.stderr[-500:]!r}")
    if implementation != "cpython" or glibc_minor < 17:
        raise LayerBuildError(f"The runtime image ({implementation}, {libc} {libc_version}) takes no manylinux wheels.")
    platforms = [f"manylinux_2_{m}_{machine}" for m in range(glibc_minor, 16, -1)] + [f"manylinux2014_{machine}"]
    if machine in ("x86_64", "i686"):
        platforms += [f"manylinux2010_{machine}", f"manylinux1_{machine}"]
    return RuntimeTarget(python=f"{major}.{minor}", platforms=tuple(platforms), image_id=image_id)


def fetch_wheels(requirements: str, folder: Path, target: RuntimeTarget, *, deadline: float) -> str:
    """pip download of the wheels of `requirements` and their dependencies, for `target`, into `folder`/wheels;
    returns pip's output. Raises LayerBuildError naming a package that has no wheel."""
    fetched = folder / "fetched"
    (folder / "requirements.txt").write_text(requirements)
    command = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-input",
               "--disable-pip-version-check", "--progress-bar", "off", "--implementation", "cp",
               "--python-version", target.python, "--abi", target.abi, "--abi", "abi3", "--abi", "none",
               *[arg for platform in target.platforms for arg in ("--platform", platform)],
               "--cache-dir", str(settings.DEPENDENCY_PIP_CACHE_DIR), "-d", str(fetched),
               "-r", str(folder / "requirements.txt")]
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=folder,
                              timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired as exc:
        raise LayerBuildError(f"Fetching the packages took longer than {settings.DEPENDENCY_BUILD_TIMEOUT} s.",
                              log=_text(exc.stdout) + _text(exc.stderr)) from None
    output = done.stdout + done.stderr
    if done.returncode != 0:
        missing = _NO_WHEEL.search(output)
        if missing:
            raise LayerBuildError(f"{missing.group(1)} has no wheel for Python {target.python} on "
                                  f"{target.platforms[0]} (or no such package); source distributions are never "
                                  f"built.", log=output)
        raise LayerBuildError("pip could not fetch the packages.", log=output)
    _check_fetched_size(fetched, "The wheels alone", log=output)
    share_tree(fetched)
    return output


def fetch_node_packages(packages: NodePackages, folder: Path, *, deadline: float) -> str:
    """`npm ci --ignore-scripts` of the normalised package.json and lockfile of `packages` into `folder`/fetched;
    returns npm's output. Raises LayerBuildError naming a package with an install script (before fetching
    anything), or when npm fails."""
    scripted = packages.with_install_scripts()
    if scripted:
        raise LayerBuildError(f"{', '.join(scripted)} needs an install script (the lockfile says hasInstallScript), "
                              f"which is never run; choose a package that installs without one.")
    fetched = folder / "fetched"
    # Only these two files: no .npmrc of the user's (the registry and npm's settings are the operator's).
    for name, content in packages.files.items():
        (fetched / name).write_text(json.dumps(content, indent=1))
    registry = ["--registry", settings.DEPENDENCY_NPM_REGISTRY] if settings.DEPENDENCY_NPM_REGISTRY else []
    command = ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--no-bin-links", "--omit=dev",
               "--prefer-offline", "--no-update-notifier", "--cache", str(settings.DEPENDENCY_NPM_CACHE_DIR),
               "--prefix", str(fetched), *registry]
    output = _run_fetch(command, cwd=fetched, deadline=deadline)
    if not (fetched / "node_modules").is_dir():
        (fetched / "node_modules").mkdir()
    _check_fetched_size(fetched / "node_modules", "The packages fetched", log=output)
    for name in (PACKAGE_JSON, PACKAGE_LOCK):
        (fetched / name).unlink(missing_ok=True)
    share_tree(fetched)
    return output


def _run_fetch(command: list[str], *, cwd: Path, deadline: float) -> str:
    """npm's fetch, on the host; its output. Raises LayerBuildError when it fails or passes the deadline."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, stdin=subprocess.DEVNULL,
                              timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired as exc:
        raise LayerBuildError(f"Fetching the packages took longer than {settings.DEPENDENCY_BUILD_TIMEOUT} s.",
                              log=_text(exc.stdout) + _text(exc.stderr)) from None
    except FileNotFoundError:
        raise LayerBuildError("npm is not installed on the worker that builds layers.") from None
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise LayerBuildError("npm could not fetch the packages.", log=output)
    return output


def _check_fetched_size(folder: Path, what: str, *, log: str) -> None:
    size = sum(os.lstat(os.path.join(parent, name)).st_size
               for parent, _, names in os.walk(folder) for name in names)
    if size > settings.DEPENDENCY_LAYER_MAX_MB * MiB:
        raise LayerBuildError(f"{what} are {size // MiB} MB, more than DEPENDENCY_LAYER_MAX_MB "
                              f"({settings.DEPENDENCY_LAYER_MAX_MB} MB).", code="dependency_layer_too_large", log=log)


def install_in_sandbox(backend: DockerBackend, layer: DependencyLayer, folder: Path, *, installer, requested: list[str],
                       deadline: float) -> tuple[dict, str]:
    """Install what was fetched into `folder`/fetched in a sandbox container with `installer` (wheel_install or
    npm_install; see the module's doc); returns the layer's manifest and the container's output. Raises
    LayerBuildError (`dependency_layer_too_large` past the limit)."""
    for module in {wheel_install, installer}:  # npm_install uses wheel_install's archive writer
        shutil.copy(module.__file__, folder / "installer" / Path(module.__file__).name)
    share_tree(folder / "installer")
    build = f"{CONTAINER_BUILD}/"
    binds = {str(folder / "installer"): {"bind": build + "installer", "mode": "ro"},
             str(folder / "fetched"): {"bind": build + "fetched", "mode": "ro"},
             str(folder / "out"): {"bind": build + "out", "mode": "rw"}}
    source = build + ("fetched/node_modules" if installer is npm_install else "fetched")
    command = ["python3", "-I", build + "installer/" + Path(installer.__file__).name, source, CONTAINER_LAYER,
               build + "out", *requested]
    outcome = backend.run(_sandbox_spec(f"layer-{layer.pk}", command, binds=binds,
                                        layer_mb=settings.DEPENDENCY_LAYER_MAX_MB,
                                        timeout=max(deadline - time.monotonic(), 1)))
    output = _text(outcome.stdout) + _text(outcome.stderr)
    if outcome.timed_out:
        raise LayerBuildError(f"Installing took longer than {settings.DEPENDENCY_BUILD_TIMEOUT} s.", log=output)
    if outcome.exit_code == wheel_install.EXIT_TOO_LARGE or outcome.oom_killed:
        raise LayerBuildError(f"The installed packages are larger than DEPENDENCY_LAYER_MAX_MB "
                              f"({settings.DEPENDENCY_LAYER_MAX_MB} MB).", code="dependency_layer_too_large", log=output)
    if outcome.exit_code == npm_install.EXIT_INSTALL_SCRIPT:
        raise LayerBuildError(_last_refusal(output), log=output)
    if outcome.exit_code != 0:
        raise LayerBuildError(f"Installing the packages failed (exit code {outcome.exit_code}).", log=output)
    return _manifest(folder / "out" / wheel_install.MANIFEST, runtime=layer.runtime), output


def _last_refusal(output: str) -> str:
    refusals = [line[len("refused: "):] for line in output.splitlines() if line.startswith("refused: ")]
    return refusals[-1][:500] if refusals else "A package was refused."


def _sandbox_spec(name: str, command: list[str], *, binds: dict, layer_mb: int, timeout: float) -> ContainerSpec:
    """A build's container: the job's hardening (the backend gives every container no network, a read-only root,
    no capabilities, no new privileges), the job's user, pids and files limits; memory for the layer's tmpfs too."""
    tmpfs = {"/tmp": f"size={settings.JOB_TMPFS_MB}m,mode=1777,noexec,nosuid,nodev"}
    if layer_mb:
        tmpfs[CONTAINER_LAYER] = f"size={layer_mb}m,uid={RUNTIME_UID},gid={RUNTIME_GID},mode=0700,nosuid,nodev"
    return ContainerSpec(
        job_id=f"{name}-{uuid.uuid4().hex[:8]}", image=settings.JOB_RUNTIME_IMAGE, command=command,
        env={"HOME": "/tmp"}, binds=binds, tmpfs=tmpfs,
        memory_bytes=(layer_mb + settings.DEPENDENCY_BUILD_MEMORY_MB) * MiB,
        nano_cpus=int(settings.JOB_CPUS * 1_000_000_000), pids_limit=settings.JOB_PIDS_LIMIT,
        nofile_limit=settings.JOB_NOFILE_LIMIT, user=RUNTIME_USER, timeout_seconds=timeout,
        output_limit_bytes=LOG_MAX_BYTES,
    )


def _manifest(path: Path, *, runtime: str = Runtime.PYTHON) -> dict:
    """The installer's manifest, read as untrusted (written in the container): no link, bounded, checked. Its
    modules are Python identifiers, or npm package names for node."""
    with _open_regular(path) as handle:
        data = json.loads(handle.read(MANIFEST_MAX_BYTES))
    packages, modules = data.get("packages"), data.get("modules")
    if not (isinstance(packages, dict) and all(isinstance(v, str) for v in packages.values())
            and isinstance(modules, list) and all(isinstance(m, str) and _module_name(m, runtime) for m in modules)
            and isinstance(data.get("size_bytes"), int)):
        raise LayerBuildError("The installer's manifest is malformed.")
    return {"packages": {str(k): v for k, v in packages.items()}, "modules": modules, "size_bytes": data["size_bytes"]}


def _module_name(name: str, runtime: str) -> bool:
    return bool(_NPM_NAME.match(name)) if runtime == Runtime.NODE else name.isidentifier()


def _store(layer: DependencyLayer, archive: Path, manifest: dict, *, log: str, image_id: str) -> None:
    digest, size = hashlib.sha256(), 0
    with _open_regular(archive) as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    finish_build(layer, chunks=_chunks(archive), log=log, image_id=image_id, archive_bytes=size,
                 archive_sha256=digest.hexdigest(), **manifest)


def _chunks(archive: Path) -> Iterator[bytes]:
    with _open_regular(archive) as handle:
        while chunk := handle.read(CHUNK_BYTES):
            yield chunk


def _open_regular(path: Path):
    """`path` opened for reading, refusing a link or anything but a regular file (the container wrote it)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LayerBuildError(f"{path.name} is not a regular file.")
    return os.fdopen(fd, "rb")


def _text(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data or ""


# --- the host's cache -------------------------------------------------------------------------------------------

class LayerUnavailable(DomainError):
    """A job's layer cannot be mounted: it is not ready, or it could not be fetched and extracted on this host."""

    code = "dependency_layer_unavailable"


def layer_root() -> Path:
    return Path(settings.DEPENDENCY_LAYER_DIR) if settings.DEPENDENCY_LAYER_DIR else settings.JOB_WORK_ROOT / "layers"


def local_layer(version: FunctionVersion) -> LocalLayer | None:
    """The layer of `version` on this host (extracted from the database the first time), or None when the version
    has no dependencies. Raises LayerUnavailable when it has, and they are not ready: a job never runs without."""
    if not version.requirements:
        return None
    layer = (DependencyLayer.objects.filter(pk=version.layer_id)
             .only("pk", "key", "status", "modules", "archive_sha256", "size_bytes").first())
    if layer is None or layer.status != LayerStatus.READY:
        raise LayerUnavailable(f"The function's dependencies are {layer.status if layer else 'removed'}; the job "
                               f"cannot run without them.", code="dependency_build_failed")
    path = layer_root() / f"{layer.pk}-{layer.key[:16]}"
    if not path.is_dir():
        _materialise(layer, path)
    return LocalLayer(path=path, modules=tuple(layer.modules))


def _materialise(layer: DependencyLayer, path: Path) -> None:
    """Extract `layer` from the database into `path`, atomically (made under a temporary name, then renamed)."""
    os.makedirs(path.parent, mode=0o700, exist_ok=True)
    temporary = path.with_name(f"{path.name}{TEMPORARY}{uuid.uuid4().hex[:8]}")
    archive = temporary.with_name(f"{temporary.name}.tar.gz")
    try:
        _fetch_archive(layer, archive)
        temporary.mkdir(mode=0o700)
        _extract(archive, temporary, limit=settings.DEPENDENCY_LAYER_MAX_MB * MiB)
        share_tree(temporary)
        fd = os.open(temporary, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            share_with_runtime(fd, 0o750)
        finally:
            os.close(fd)
        try:
            os.rename(temporary, path)
        except OSError:  # another process of this host made it meanwhile: theirs is as good
            if not path.is_dir():
                raise
        logger.info("layer %s: extracted on this host at %s", layer.key[:12], path)
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise LayerUnavailable(f"The dependency layer could not be extracted on this worker: {exc}") from None
    finally:
        archive.unlink(missing_ok=True)
        shutil.rmtree(temporary, ignore_errors=True)


def _fetch_archive(layer: DependencyLayer, target: Path) -> None:
    digest = hashlib.sha256()
    chunks = (DependencyLayerChunk.objects.filter(layer=layer).order_by("index")
              .values_list("data", flat=True).iterator(chunk_size=1))
    with open(target, "xb") as handle:
        for data in chunks:
            digest.update(data)
            handle.write(data)
    if digest.hexdigest() != layer.archive_sha256:
        raise ValueError("the stored layer does not match its digest")


def _extract(archive: Path, target: Path, *, limit: int) -> None:
    """Unpack the layer's tar into `target`: regular files and folders only, relative names without `..`, at most
    `limit` bytes. Raises ValueError for anything else."""
    total = 0
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if not parts or member.name.startswith("/") or ".." in parts:
                raise ValueError(f"unsafe name in the layer: {member.name!r}")
            path = target.joinpath(*parts)
            if member.isdir():
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
                continue
            if not member.isfile():
                raise ValueError(f"the layer holds something other than files and folders: {member.name!r}")
            total += member.size
            if total > limit:
                raise ValueError("the layer is larger than DEPENDENCY_LAYER_MAX_MB")
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with tar.extractfile(member) as source, open(path, "xb") as copy:
                shutil.copyfileobj(source, copy, CHUNK_BYTES)


def prune_host_cache(backend: DockerBackend) -> int:
    """Remove this host's layer folders whose layer is gone from the database (see jobs.dependencies'
    cleanup) and that no container mounts, and temporary ones that were abandoned. Returns how many it removed."""
    root = layer_root()
    if not root.is_dir():
        return 0
    try:
        mounted = backend.mounted_sources()
    except ContainerError as exc:
        logger.warning("layers: cannot list the engine's mounts (%s); nothing pruned", exc)
        return 0
    alive = {f"{pk}-{key[:16]}" for pk, key in DependencyLayer.objects.values_list("pk", "key")}
    removed = 0
    for entry in root.iterdir():
        if TEMPORARY in entry.name:
            if time.time() - entry.lstat().st_mtime < TEMPORARY_MAX_AGE_SECONDS:
                continue
        elif entry.name in alive or str(entry) in mounted:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    if removed:
        logger.info("layers: removed %d folders of this host's cache", removed)
    return removed


def cleanup(backend: DockerBackend) -> None:
    """The periodic work on layers: the database's (jobs.dependencies.sweep_layers), then this host's cache."""
    logger.info("layers: %s", sweep_layers())
    prune_host_cache(backend)
