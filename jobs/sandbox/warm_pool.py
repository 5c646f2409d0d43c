"""Warm single-use containers: each worker process keeps job containers created and started ahead of demand.

A pooled container is hardened exactly as a cold one (same image, mounts, limits, user). It is started with its
slot folder mounted (code, input, and the run folder that will hold the job's gateway socket and that holds the
start FIFO); its runtime (`sdk/warm.py`) waits on the FIFO. A claimed job takes a ready slot of its resource
profile, fills it, binds its gateway there and writes its environment to the FIFO: the script starts. The
container serves that one job and is removed after it; it never saw another job's code, input, files or processes.

Pools are keyed by `Profile`. The profiles the pool starts with (the default one) are pinned: always kept warm. A
job whose profile has no ready slot takes the cold path, and the pool keeps that profile warm from then on when
jobs of `owners_to_warm` different owners asked for it, or when one owner asked for it again (a hot function of
theirs) and has no other profile warmed for them alone. At most `max_profiles` profiles besides the pinned ones,
the least recently used dropped. So one tenant's odd sizes can never evict the default profile, and hold at most
one of the other places.
Refill, pruning of dead or old containers, and removal of used ones run in background threads, off the job's path.

Ownership: every pool container carries POOL_LABEL (this pool's owner id) and the host name, process id and
process start time of its owner. A pool removes only its own containers, and at start the orphans of owners on
this host whose process is gone; it never touches containers it did not create.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import queue
import shutil
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .docker_backend import POOL_LABEL, ContainerError, ContainerSpec, DockerBackend
from .pool_containers import (HOST_LABEL, PID_LABEL, PID_START_LABEL, PROFILE_LABEL, SLOT_LABEL, SLOT_PREFIX,
                              process_start, reap_orphans, remove_container, safe_labelled)
from .workdir import share_socket

logger = logging.getLogger(__name__)

START_FIFO = "start"
# How long a claim waits for a freshly started runtime to reach its FIFO before it takes the cold path instead.
START_WAIT_SECONDS = 2.0
CHECK_SECONDS = 2.0
READY_TIMEOUT_SECONDS = 30.0
# How often a container that is not ready yet is asked whether it still runs. Each ask is an engine call, and the
# engine is what limits a burst of jobs: a runtime is normally ready well within this.
READY_CHECK_SECONDS = 2.0
MiB = 1024 * 1024


class SlotUnavailable(Exception):
    """The slot's runtime is not waiting (its container died or was killed): the job was not started in it."""


@dataclass(frozen=True)
class Profile:
    """What a container is created with and cannot change afterwards: the key of a pool."""

    image: str
    memory_bytes: int
    nano_cpus: int
    pids_limit: int
    tmpfs_mb: int
    nofile_limit: int
    # The host folder of the job's dependency layer ("" without one), mounted read-only, and the layer's modules
    # that a warm container imports while it waits, so that a job's own imports of them cost nothing.
    layer: str = ""
    preload: tuple[str, ...] = ()
    # The runtime a container of this profile starts (a jobs.models.Runtime): it runs only that runtime's jobs.
    runtime: str = "python"

    @property
    def key(self) -> str:
        layer = f"-layer{Path(self.layer).name}" if self.layer else ""
        return (f"{self.memory_bytes // MiB}m-{self.nano_cpus / 1e9:g}cpu-{self.pids_limit}pids-"
                f"{self.tmpfs_mb}tmpfs-{self.nofile_limit}nofile-{self.image}-{self.runtime}{layer}")


@dataclass
class Slot:
    """A started container waiting for one job, and its folder on the host."""

    container_id: str
    path: Path
    profile: Profile
    created: float = field(default_factory=time.monotonic)
    finished: bool = False

    @property
    def run_dir(self) -> Path:
        return self.path / "run"

    @property
    def fifo(self) -> Path:
        return self.run_dir / START_FIFO

    def begin(self, env: dict[str, str], *, is_running: Callable[[], bool]) -> None:
        """Hand the job's environment to the waiting runtime, which then runs the script.

        Raises SlotUnavailable when no runtime is waiting (checked with `is_running` while a fresh container may
        still be starting); nothing of the job has run then.
        """
        fd = self._open_writer(is_running)
        # The FIFO's name goes before the signal does: once the runtime has it, the script runs and could find the
        # FIFO still there (and write to it). The open ends (ours, the runtime's) outlive the name.
        self.fifo.unlink(missing_ok=True)
        try:
            os.set_blocking(fd, True)
            data = memoryview(json.dumps(env).encode() + b"\n")  # JSON escapes newlines: this one ends it
            while data:
                data = data[os.write(fd, data):]
        except BrokenPipeError:
            # The runtime acts only on a complete signal (up to its newline), so the script did not start.
            raise SlotUnavailable("the warm runtime went away while it was given its job") from None
        finally:
            os.close(fd)

    def wait_ready(self, timeout: float, *, is_running: Callable[[], bool],
                   stop: threading.Event | None = None) -> bool:
        """Wait until the runtime holds the start FIFO open (so that a job given to it starts at once); True when it
        does. False at once when the container stopped (a runtime that died at start must not hold up the pool's
        refill for the whole timeout); `is_running` asks the engine, so it is asked at most every READY_CHECK_SECONDS.
        The probe opens the FIFO for writing and closes it unwritten: the runtime, which holds it open for writing
        too, never sees an end of file."""
        deadline = time.monotonic() + timeout
        next_check = time.monotonic() + READY_CHECK_SECONDS
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            try:
                os.close(os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK))
                return True
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    return False
            if time.monotonic() >= next_check:
                if not is_running():
                    return False
                next_check = time.monotonic() + READY_CHECK_SECONDS
            time.sleep(0.01)
        return False

    def _open_writer(self, is_running: Callable[[], bool]) -> int:
        # O_NONBLOCK: opening a FIFO for writing fails at once (ENXIO) when no reader has it open, instead of
        # blocking forever on a dead container.
        deadline = time.monotonic() + START_WAIT_SECONDS
        next_check = 0.0
        while True:
            try:
                return os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise SlotUnavailable(f"the start FIFO cannot be opened: {exc}") from None
            now = time.monotonic()
            if now > deadline:
                raise SlotUnavailable("the warm runtime did not reach its start FIFO in time")
            if now >= next_check:
                if not is_running():
                    raise SlotUnavailable("the warm container is not running")
                next_check = now + 0.05
            time.sleep(0.002)


class WarmPool:
    """The warm containers of one worker process. Thread-safe: jobs take slots from several threads."""

    def __init__(self, *, size: int, root: Path, spec_for: Callable[[Profile, Path], ContainerSpec],
                 layout: Callable[[Path], object], backend_factory: Callable[[], DockerBackend],
                 max_age_seconds: float = 600.0, max_profiles: int = 4, owners_to_warm: int = 2,
                 owner: str | None = None):
        self.size = size
        self.owners_to_warm = owners_to_warm
        self.root = Path(root)
        self.max_age_seconds = max_age_seconds
        self.max_profiles = max_profiles
        self.owner = owner or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._spec_for = spec_for
        self._layout = layout
        self._backend_factory = backend_factory
        self._lock = threading.Lock()
        self._ready: dict[Profile, deque[Slot]] = {}
        self._wanted: dict[Profile, float] = {}  # profile -> last time a job asked for it
        self._pinned: set[Profile] = set()
        # Profiles asked for but not warmed yet -> how many times each owner asked (bounded: see _note_demand).
        self._asked: dict[Profile, dict[object, int]] = {}
        # The profile warmed for one owner alone, by owner (one each).
        self._owned: dict[object, Profile] = {}
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._retired: queue.Queue[Slot | None] = queue.Queue()
        self._threads: list[threading.Thread] = []

    # --- life cycle --------------------------------------------------------------------------------------------

    def start(self, profiles: Iterable[Profile] = ()) -> WarmPool:
        """Remove the orphans of dead owners on this host, then keep `size` ready containers of each profile."""
        reap_orphans(self._backend_factory(), root=self.root)
        for profile in profiles:
            self._pinned.add(profile)
            self._want(profile)
        self._threads = [
            threading.Thread(target=self._refill_loop, name="warm-pool-refill", daemon=True),
            threading.Thread(target=self._remove_loop, name="warm-pool-remove", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        logger.info("warm pool %s: started, %d per profile", self.owner, self.size)
        return self

    def stop(self) -> None:
        """Stop refilling and remove every container of this pool, used or not."""
        self._stopped.set()
        self._wake.set()
        self._retired.put(None)
        for thread in self._threads:
            thread.join(timeout=30)
        with self._lock:
            slots = [slot for ready in self._ready.values() for slot in ready]
            self._ready.clear()
        backend = self._backend_factory()
        for slot in slots:
            self._remove(backend, slot)
        # Anything else still labelled as ours: used containers not yet removed, and a job's still running when
        # the pool is stopped under it (a worker stops its pool only once its jobs are over).
        for container in safe_labelled(backend, f"{POOL_LABEL}={self.owner}"):
            remove_container(backend, container, root=self.root)
        logger.info("warm pool %s: stopped", self.owner)

    # --- the job's side -----------------------------------------------------------------------------------------

    def take(self, profile: Profile, *, owner: object = None) -> Slot | None:
        """A ready slot of `profile`, or None (the job takes the cold path). Never waits for a container. `owner`
        (the job's owner) counts towards warming a profile that is not warm yet."""
        stale: list[Slot] = []
        slot = None
        with self._lock:
            if profile in self._wanted or self._note_demand(profile, owner):
                self._want(profile)
            ready = self._ready.get(profile, deque())
            while ready and slot is None:
                candidate = ready.popleft()
                if time.monotonic() - candidate.created > self.max_age_seconds:
                    stale.append(candidate)
                else:
                    slot = candidate
        for old in stale:
            self._retired.put(old)
        self._wake.set()
        return slot

    def release(self, slot: Slot) -> None:
        """The job is done with `slot`: its container and folder go. A container that ended is removed in the
        background; one that may still run (the job failed half way) is removed now."""
        if slot.finished:
            self._retired.put(slot)
        else:
            self._remove(self._backend_factory(), slot)

    def ready_count(self, profile: Profile | None = None) -> int:
        with self._lock:
            if profile is not None:
                return len(self._ready.get(profile, ()))
            return sum(len(ready) for ready in self._ready.values())

    def fill(self, profile: Profile, *, backend: DockerBackend | None = None) -> Slot:
        """Create, start and add one container of `profile` now (the refill thread's step; tests call it too)."""
        slot = self._create(backend or self._backend_factory(), profile)
        with self._lock:
            self._want(profile)
            self._ready.setdefault(profile, deque()).append(slot)
        return slot

    # --- background work ---------------------------------------------------------------------------------------

    def _note_demand(self, profile: Profile, owner: object) -> bool:
        """Count `owner`'s ask for a profile that is not warm (the lock held); True when it is to be warmed: enough
        owners asked, or `owner` asked again and holds no other profile of their own."""
        asks = self._asked.setdefault(profile, {})
        asks[owner] = asks.get(owner, 0) + 1
        shared = len(asks) >= self.owners_to_warm
        own = asks[owner] >= 2 and self._owned.get(owner) not in self._wanted
        if shared or own:
            del self._asked[profile]
            if not shared:
                self._owned[owner] = profile
            return True
        if len(self._asked) > 4 * max(self.max_profiles, 1):  # a flood of odd sizes: forget the oldest asks
            del self._asked[next(iter(self._asked))]
        return False

    def _want(self, profile: Profile) -> None:
        """Mark `profile` as wanted (called with the lock held); the least recently wanted unpinned one beyond
        `max_profiles` is dropped and its containers retired. Pinned profiles are never dropped."""
        self._wanted[profile] = time.monotonic()
        while len(self._wanted) - len(self._pinned & self._wanted.keys()) > self.max_profiles:
            oldest = min((p for p in self._wanted if p not in self._pinned), key=self._wanted.__getitem__)
            del self._wanted[oldest]
            for slot in self._ready.pop(oldest, ()):
                self._retired.put(slot)

    def _refill_loop(self) -> None:
        backend = self._backend_factory()
        last_check = time.monotonic()
        while not self._stopped.is_set():
            try:
                if time.monotonic() - last_check >= CHECK_SECONDS:
                    last_check = time.monotonic()
                    self._prune(backend)
                self._top_up(backend)
            except ContainerError as exc:
                logger.warning("warm pool %s: %s", self.owner, exc)
                self._stopped.wait(1.0)
            except Exception:
                logger.exception("warm pool %s: refill failed", self.owner)
                self._stopped.wait(1.0)
            self._wake.wait(timeout=CHECK_SECONDS)
            self._wake.clear()

    def _top_up(self, backend: DockerBackend) -> None:
        while not self._stopped.is_set():
            with self._lock:
                short = [p for p in self._wanted if len(self._ready.get(p, ())) < self.size]
            if not short:
                return
            slot = self._create(backend, short[0])
            with self._lock:
                if short[0] in self._wanted and not self._stopped.is_set():
                    self._ready.setdefault(short[0], deque()).append(slot)
                    slot = None
            if slot is not None:  # its profile was dropped, or the pool stopped, while it was being made
                self._remove(backend, slot)

    def _prune(self, backend: DockerBackend) -> None:
        """Retire ready containers that died (killed, or their runtime exited) or outlived the maximum age. A slot
        made after the engine was asked (by `fill` on another thread) may be missing from its answer: it is judged
        at the next check."""
        asked_at = time.monotonic()  # a slot's `created` is taken once its container runs
        alive = {c["id"] for c in backend.labelled(f"{POOL_LABEL}={self.owner}") if c["status"] == "running"}
        now = time.monotonic()
        with self._lock:
            for profile, ready in self._ready.items():
                keep = deque(s for s in ready if (s.container_id in alive or s.created >= asked_at)
                             and now - s.created <= self.max_age_seconds)
                for slot in ready:
                    if slot not in keep:
                        logger.info("warm pool %s: replacing %s (dead or too old)", self.owner, slot.container_id[:12])
                        self._retired.put(slot)
                self._ready[profile] = keep

    def _remove_loop(self) -> None:
        backend = self._backend_factory()
        while True:
            slot = self._retired.get()
            if slot is None:
                return
            self._remove(backend, slot)

    # --- containers and folders ---------------------------------------------------------------------------------

    def _create(self, backend: DockerBackend, profile: Profile) -> Slot:
        path = self.root / f"{SLOT_PREFIX}{uuid.uuid4().hex[:12]}"
        spec = self._spec_for(profile, path)
        try:
            self._layout(path)
            _make_fifo(path / "run" / START_FIFO)
            container_id = backend.start_idle(spec, name=f"ainode-warm-{path.name[len(SLOT_PREFIX):]}",
                                              labels=self._labels(profile, path))
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        slot = Slot(container_id=container_id, path=path, profile=profile)
        # Ready means waiting on its FIFO: a job never waits for a runtime to start.
        if not slot.wait_ready(READY_TIMEOUT_SECONDS, stop=self._stopped,
                               is_running=lambda: backend.is_running(container_id)):
            self._remove(backend, slot)
            raise ContainerError(f"a warm container's runtime did not start (within {READY_TIMEOUT_SECONDS:g} s, "
                                 f"or its container stopped)")
        return slot

    def _labels(self, profile: Profile, path: Path) -> dict[str, str]:
        pid = os.getpid()
        return {POOL_LABEL: self.owner, HOST_LABEL: socket.gethostname(), PID_LABEL: str(pid),
                PID_START_LABEL: process_start(pid) or "", PROFILE_LABEL: profile.key, SLOT_LABEL: str(path)}

    @staticmethod
    def _remove(backend: DockerBackend, slot: Slot) -> None:
        try:
            backend.remove_container(slot.container_id)
        except ContainerError as exc:
            logger.warning("warm pool: could not remove %s: %s", slot.container_id[:12], exc)
        shutil.rmtree(slot.path, ignore_errors=True)


def _make_fifo(path: Path) -> None:
    """The start FIFO in the slot's run folder (made by `workdir`, 0750 with the container's group): owner the
    worker, group the container's user, 0660, as the gateway's socket beside it (the runtime opens it read-write)."""
    os.mkfifo(path, 0o600)
    share_socket(path)


_current: WarmPool | None = None


def current() -> WarmPool | None:
    """This process's pool, or None when the pool is off."""
    return _current


def install(pool: WarmPool | None) -> WarmPool | None:
    """Make `pool` this process's pool; returns the one it replaces (which the caller stops)."""
    global _current
    previous, _current = _current, pool
    return previous
