"""The warm pool's containers as the engine lists them: the labels that say whose they are, and the removal of
those whose owner (a worker process on this host) is gone."""
from __future__ import annotations

import logging
import shutil
import socket
from pathlib import Path

from .docker_backend import POOL_LABEL, ContainerError, DockerBackend

logger = logging.getLogger(__name__)

HOST_LABEL = "infra-ainode.pool-host"
PID_LABEL = "infra-ainode.pool-pid"
PID_START_LABEL = "infra-ainode.pool-pid-start"
PROFILE_LABEL = "infra-ainode.pool-profile"
SLOT_LABEL = "infra-ainode.pool-slot"
SLOT_PREFIX = "w-"


def reap_orphans(backend: DockerBackend, *, root: Path | None = None) -> int:
    """Remove the pool containers whose owner was a process on this host that is gone (a worker that died).

    Containers of live owners, and of owners on other hosts, are left alone. A removed container's slot folder is
    deleted too when it lies under `root`. Returns how many containers were removed.
    """
    removed = 0
    host = socket.gethostname()
    for container in safe_labelled(backend, POOL_LABEL):
        labels = container["labels"]
        if labels.get(HOST_LABEL) != host or _owner_alive(labels):
            continue
        remove_container(backend, container, root=root)
        removed += 1
    if removed:
        logger.info("warm pool: removed %d containers of dead workers", removed)
    return removed


def _owner_alive(labels: dict[str, str]) -> bool:
    try:
        pid = int(labels.get(PID_LABEL, ""))
    except ValueError:
        return False
    started = process_start(pid)
    # The start time tells a live owner from a new process that got the dead owner's pid.
    return started is not None and started == labels.get(PID_START_LABEL)


def process_start(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (start time), counted after the command name, which is in parentheses and may hold spaces.
    return stat.rpartition(")")[2].split()[19]


def safe_labelled(backend: DockerBackend, label: str) -> list[dict]:
    try:
        return backend.labelled(label)
    except ContainerError as exc:
        logger.warning("warm pool: cannot list containers: %s", exc)
        return []


def remove_container(backend: DockerBackend, container: dict, *, root: Path | None) -> None:
    """Remove a labelled container, and its slot folder when that lies under `root`."""
    try:
        backend.remove_container(container["id"])
    except ContainerError as exc:
        logger.warning("warm pool: could not remove %s: %s", container["id"][:12], exc)
    slot = Path(container["labels"].get(SLOT_LABEL, ""))
    if root is not None and slot.name.startswith(SLOT_PREFIX) and slot.parent == Path(root):
        shutil.rmtree(slot, ignore_errors=True)
