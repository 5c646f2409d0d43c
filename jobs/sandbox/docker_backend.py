"""The only module that speaks to the Docker engine.

`DockerBackend.run` starts one hardened container from a `ContainerSpec`, streams its output (capped), enforces
the wall-clock timeout and cancellation, samples memory, and always removes the container. A warm container
(created and started ahead of demand, its runtime waiting for one job) is driven by `start_idle` and then
`supervise`, which counts the timeout from the moment its job begins. Every failure of the engine surfaces as our
own `ContainerError`, never as a docker-py or requests exception.
"""
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

logger = logging.getLogger(__name__)

JOB_LABEL = "infra-ainode.job-id"
POOL_LABEL = "infra-ainode.pool-owner"
POLL_SECONDS = 0.1
# The engine's wait call tells the exit at once; the state is still looked at this often in case that call failed.
STATE_CHECK_SECONDS = 1.0


class ContainerError(Exception):
    """The engine could not run the container. `code` is a job error code."""

    def __init__(self, message: str, *, code: str = "executor_unavailable"):
        super().__init__(message)
        self.code = code


class ContainerNotStarted(ContainerError):
    """The engine failed before the job's script could run (it could not be reached, or refused to create or attach
    to the container): nothing of the job ran, so it is safe to try again once the engine answers."""


class ContainerGone(ContainerNotStarted):
    """A started container that was to run a job no longer exists; nothing of the job ran in it."""


def _never_reached(exc: BaseException) -> bool:
    """Whether a failed engine call never reached the engine (its socket is missing or refuses connections), so
    that whatever it asked for did not happen."""
    for _ in range(10):  # the chain of causes, and requests' errors that carry theirs as an argument
        if exc is None:
            return False
        if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
            return True
        exc = exc.__cause__ or exc.__context__ or next(
            (arg for arg in getattr(exc, "args", ()) if isinstance(arg, BaseException)), None)
    return False


@dataclass(frozen=True)
class ContainerSpec:
    job_id: str
    image: str
    command: list[str]
    env: dict[str, str]
    binds: dict[str, dict[str, str]]
    tmpfs: dict[str, str]
    memory_bytes: int
    nano_cpus: int
    pids_limit: int
    user: str
    timeout_seconds: float
    output_limit_bytes: int
    nofile_limit: int = 256
    working_dir: str = "/job"


@dataclass
class ContainerOutcome:
    container_id: str
    exit_code: int | None = None
    oom_killed: bool = False
    timed_out: bool = False
    cancelled: bool = False
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    duration_ms: int = 0
    peak_memory_bytes: int | None = None


# Receives the bytes of one stream that are kept under the cap, as they arrive: (stream, data, truncated), where
# `truncated` marks the last call for a stream that passed its cap. Called on the output pump's thread: it must
# return at once (the runner's event writer only buffers).
OutputCallback = Callable[[str, bytes, bool], None]


@dataclass
class _CappedStream:
    limit: int
    name: str = "stdout"
    on_kept: OutputCallback | None = None
    data: bytearray = field(default_factory=bytearray)
    total: int = 0

    def add(self, chunk: bytes | None) -> None:
        if not chunk:
            return
        was_truncated = self.truncated
        self.total += len(chunk)
        room = self.limit - len(self.data)
        kept = chunk[:room] if room > 0 else b""
        self.data += kept
        if self.on_kept is not None and not was_truncated and (kept or self.truncated):
            self._tell(kept)

    def _tell(self, kept: bytes) -> None:
        try:
            self.on_kept(self.name, kept, self.truncated)
        except Exception:  # a listener's trouble must never cost the job its output
            logger.warning("output callback failed", exc_info=True)

    @property
    def truncated(self) -> bool:
        return self.total > len(self.data)


class DockerBackend:
    def __init__(self, client: docker.DockerClient | None = None, *, base_url: str | None = None):
        self._client = client
        self._base_url = base_url

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                if self._base_url:
                    self._client = docker.DockerClient(base_url=self._base_url, timeout=30)
                else:
                    self._client = docker.from_env(timeout=30)
            except DockerException as exc:
                raise ContainerNotStarted(f"Docker engine unavailable: {exc}") from None
            # The engine is never reached through a proxy, nor with .netrc credentials: without this, requests
            # reads the proxy variables and looks for ~/.netrc on every engine call.
            self._client.api.trust_env = False
        return self._client

    def run(self, spec: ContainerSpec, *, should_cancel: Callable[[], bool] = lambda: False,
            before_start: Callable[[str], None] = lambda container_id: None,
            on_started: Callable[[str], None] = lambda container_id: None,
            on_output: OutputCallback | None = None) -> ContainerOutcome:
        """Run `spec` to its end; raises ContainerNotStarted when the engine fails before the script could run, and
        ContainerError when it fails after the script may have.

        `before_start` is told the container's id just before it is started (nothing of the script ran yet);
        `on_output` sees the output as it comes (only what is kept under the cap, see OutputCallback)."""
        container = self._create(spec, name=f"ainode-job-{spec.job_id}", labels={JOB_LABEL: spec.job_id})

        def begin() -> None:
            before_start(container.id)
            self._start(container)

        try:
            return self._supervise(container, spec, begin=begin,
                                   should_cancel=should_cancel, on_started=on_started, on_output=on_output)
        finally:
            self._remove(container)

    def start_idle(self, spec: ContainerSpec, *, name: str, labels: dict[str, str]) -> str:
        """Create and start a warm container whose runtime waits for a job; returns its id."""
        container = self._create(spec, name=name, labels=labels)
        try:
            self._start(container)
        except ContainerError:
            self._remove(container)
            raise
        return container.id

    def supervise(self, container_id: str, spec: ContainerSpec, *, begin: Callable[[], None],
                  should_cancel: Callable[[], bool] = lambda: False,
                  on_started: Callable[[str], None] = lambda container_id: None,
                  on_output: OutputCallback | None = None) -> ContainerOutcome:
        """Run one job in the started container `container_id`: attach to its output, call `begin` (which hands
        the job to the waiting runtime), then wait exactly as `run` does, the timeout counted from `begin`.
        `on_output` is as in `run`.

        An exception from `begin` propagates as it is (the job never started). The caller removes the container.
        Raises ContainerGone when the container no longer exists (found by the attach, which comes first).
        """
        return self._supervise(self._container(container_id), spec, begin=begin, should_cancel=should_cancel,
                               on_started=on_started, on_output=on_output)

    def _supervise(self, container, spec: ContainerSpec, *, begin: Callable[[], None],
                   should_cancel: Callable[[], bool], on_started: Callable[[str], None],
                   on_output: OutputCallback | None) -> ContainerOutcome:
        outcome = ContainerOutcome(container_id=container.id)
        stdout = _CappedStream(spec.output_limit_bytes, "stdout", on_output)
        stderr = _CappedStream(spec.output_limit_bytes, "stderr", on_output)
        reader = self._start_reader(container, stdout, stderr)
        # Taken before `begin`: a cold container's own StartedAt is later and wins; a warm one started long ago.
        began = datetime.now(timezone.utc)
        begin()
        # The timeout counts from here: recording the start (a database write that may wait for a lock) is the
        # worker's time, not the job's, and must not lengthen what the job may run.
        deadline = time.monotonic() + spec.timeout_seconds
        on_started(container.id)
        self._wait(container, outcome, should_cancel, began=began, deadline=deadline)
        reader.join(timeout=10)
        outcome.stdout, outcome.stderr = bytes(stdout.data), bytes(stderr.data)
        outcome.stdout_truncated, outcome.stderr_truncated = stdout.truncated, stderr.truncated
        return outcome

    def _start(self, container) -> None:
        try:
            container.start()
        except APIError as exc:  # the engine answered, and did not start it
            raise ContainerNotStarted(f"Docker could not start the job container: {exc}") from None
        except (DockerException, requests.RequestException) as exc:
            # A start whose answer was lost may have started the script: only one that never reached the engine
            # is known not to have.
            error = ContainerNotStarted if _never_reached(exc) else ContainerError
            raise error(f"Docker could not start the job container: {exc}") from None

    def remove_job_containers(self, job_id: str | None = None) -> int:
        """Remove containers that a dead worker left behind (all job containers, or one job's)."""
        label = f"{JOB_LABEL}={job_id}" if job_id else JOB_LABEL
        containers = self._list(label)
        for container in containers:
            self._remove(container)
        return len(containers)

    def labelled(self, label: str) -> list[dict]:
        """The containers carrying `label` (`name` or `name=value`), running or not: id, status, labels."""
        # Sparse: the engine's list as it is, without inspecting each container (one may go in between).
        return [{"id": c.id, "status": c.attrs.get("State", ""), "labels": dict(c.attrs.get("Labels") or {})}
                for c in self._list(label, sparse=True)]

    def remove_container(self, container_id: str) -> None:
        """Kill and remove one container; nothing happens when it is already gone."""
        try:
            self.client.api.remove_container(container_id, force=True)
        except NotFound:
            pass
        except (DockerException, requests.RequestException) as exc:
            raise ContainerError(f"Could not remove container {container_id[:12]}: {exc}") from None

    def image_id(self, image: str) -> str:
        """The id of the local image `image`; raises ContainerError (`runtime_image_missing` when it is absent)."""
        try:
            return self.client.images.get(image).id
        except ImageNotFound:
            raise ContainerError(f"Runtime image {image} is missing; build it with scripts/build-runtime-image.sh.",
                                 code="runtime_image_missing") from None
        except (DockerException, requests.RequestException) as exc:
            raise ContainerError(f"Docker engine unavailable: {exc}") from None

    def mounted_sources(self) -> set[str]:
        """The host paths that some container of this engine (running or not) mounts."""
        try:
            containers = self.client.api.containers(all=True)
        except (DockerException, requests.RequestException) as exc:
            raise ContainerError(f"Docker engine unavailable: {exc}") from None
        return {mount.get("Source", "") for container in containers for mount in container.get("Mounts") or ()}

    def is_running(self, container_id: str) -> bool:
        try:
            container = self.client.containers.get(container_id)
        except NotFound:
            return False
        except (DockerException, requests.RequestException) as exc:
            raise ContainerError(f"Docker engine unavailable: {exc}") from None
        return container.status == "running"

    def _list(self, label: str, *, sparse: bool = False) -> list:
        try:
            return self.client.containers.list(all=True, filters={"label": label}, sparse=sparse,
                                               ignore_removed=True)
        except (DockerException, requests.RequestException) as exc:
            raise ContainerError(f"Docker engine unavailable: {exc}") from None

    def _create(self, spec: ContainerSpec, *, name: str, labels: dict[str, str]):
        api = self.client.api
        try:
            host_config = api.create_host_config(
                # The hardening: no network at all (the gateway socket is the only door), nothing writable but
                # the tmpfs areas, no capabilities, no privilege gain, bounded processes, memory and CPU.
                network_mode="none",
                read_only=True,
                tmpfs=spec.tmpfs,
                binds=spec.binds,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges:true"],
                pids_limit=spec.pids_limit,
                # Open files (and sockets to the gateway) are bounded too, soft and hard alike.
                ulimits=[docker.types.Ulimit(name="nofile", soft=spec.nofile_limit, hard=spec.nofile_limit)],
                mem_limit=spec.memory_bytes,
                memswap_limit=spec.memory_bytes,
                nano_cpus=spec.nano_cpus,
                ipc_mode="none",
                init=True,
                # Output is streamed and capped by us; the engine must not keep its own unbounded copy on disk.
                log_config={"type": "none"},
            )
            created = api.create_container(
                image=spec.image,
                command=spec.command,
                name=name,
                environment=spec.env,
                labels=labels,
                working_dir=spec.working_dir,
                user=spec.user,
                volumes=[mount["bind"] for mount in spec.binds.values()],
                host_config=host_config,
                stdin_open=False,
                tty=False,
            )
        except ImageNotFound:
            raise ContainerError(
                f"Runtime image {spec.image} is missing; build it with scripts/build-runtime-image.sh.",
                code="runtime_image_missing",
            ) from None
        except (DockerException, requests.RequestException) as exc:
            raise ContainerNotStarted(f"Docker engine unavailable: {exc}") from None
        # The low-level calls, as docker-py's `containers.create` makes them, without the inspect that it adds: the
        # id is all that the job needs, and every call costs the engine, which is what limits a burst of jobs.
        return self._container(created["Id"])

    def _container(self, container_id: str):
        """A handle on the container `container_id`, made without asking the engine anything."""
        return self.client.containers.prepare_model({"Id": container_id})

    def _start_reader(self, container, stdout: _CappedStream, stderr: _CappedStream) -> threading.Thread:
        # Attach before start so that not one byte of output is missed.
        try:
            frames: Iterator = container.attach(stdout=True, stderr=True, stream=True, demux=True, logs=False)
        except NotFound:
            raise ContainerGone(f"The container {container.id[:12]} is gone.") from None
        except (DockerException, requests.RequestException) as exc:
            raise ContainerNotStarted(f"Docker could not attach to the job container: {exc}") from None

        def pump() -> None:
            try:
                for out, err in frames:
                    stdout.add(out)
                    stderr.add(err)
            except Exception:  # the stream ends abruptly when the container is killed; what we have is kept
                logger.debug("output stream of %s ended early", container.id, exc_info=True)

        reader = threading.Thread(target=pump, name=f"output-{container.id[:12]}", daemon=True)
        reader.start()
        return reader

    def _wait(self, container, outcome: ContainerOutcome, should_cancel: Callable[[], bool], *,
              began: datetime, deadline: float) -> None:
        memory = _MemorySampler(container.id)
        exited = self._exit_watch(container)
        last_look = 0.0
        while True:
            memory.sample()
            if exited.is_set() or time.monotonic() - last_look >= STATE_CHECK_SECONDS:
                state, last_look = self._state(container), time.monotonic()
                if state.get("Status") in ("exited", "dead"):
                    break
                exited.clear()  # the wait call failed rather than saw an exit: the periodic look remains
            if should_cancel():
                outcome.cancelled = True
                self._kill(container)
            elif time.monotonic() >= deadline:
                outcome.timed_out = True
                self._kill(container)
            exited.wait(POLL_SECONDS)
        outcome.exit_code = int(state.get("ExitCode", -1))
        outcome.oom_killed = bool(state.get("OOMKilled"))
        outcome.duration_ms = _duration_ms(state, began)
        outcome.peak_memory_bytes = memory.peak

    def _exit_watch(self, container) -> threading.Event:
        """An event set when the container stops, from the engine's own wait call (no polling delay)."""
        exited = threading.Event()

        def watch() -> None:
            try:
                self.client.api.wait(container.id, timeout=None)
            except Exception:  # the engine went away, or the container was removed: the periodic look decides
                logger.debug("wait on %s failed", container.id, exc_info=True)
            finally:
                exited.set()

        threading.Thread(target=watch, name=f"exit-{container.id[:12]}", daemon=True).start()
        return exited

    def _state(self, container) -> dict:
        try:
            container.reload()
        except (DockerException, requests.RequestException) as exc:
            raise ContainerError(f"Lost the Docker engine while the job ran: {exc}") from None
        return container.attrs.get("State", {})

    def _kill(self, container) -> None:
        try:
            container.kill()
        except NotFound:
            pass
        except DockerException as exc:
            # The container may have exited between the poll and the kill: "is not running" is harmless.
            logger.info("kill of %s: %s", container.id, exc)

    def _remove(self, container) -> None:
        """`remove_container`, where a failure is only logged (the job's outcome is known by then)."""
        try:
            self.remove_container(container.id)
        except ContainerError as exc:
            logger.warning("%s", exc)


class _MemorySampler:
    """Tracks a container's peak memory from its cgroup while it runs (cgroup v1 or v2).

    The cgroup disappears when the container stops, so the figure is the last sample; the worker also takes the
    peak that the runtime reports from inside, whichever is larger.
    """

    def __init__(self, container_id: str):
        candidates = [
            Path(f"/sys/fs/cgroup/memory/docker/{container_id}/memory.max_usage_in_bytes"),
            Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/memory.peak"),
            Path(f"/sys/fs/cgroup/docker/{container_id}/memory.peak"),
        ]
        self._paths = candidates
        self.peak: int | None = None

    def sample(self) -> None:
        for path in self._paths:
            try:
                value = int(path.read_text())
            except (OSError, ValueError):
                continue
            self.peak = max(self.peak or 0, value)
            self._paths = [path]
            return


def _duration_ms(state: dict, began: datetime) -> int:
    """From the job's start (the container's, or the moment a warm container got its job) to the container's end."""
    try:
        started = max(_parse_docker_time(state["StartedAt"]), began)
        finished = _parse_docker_time(state["FinishedAt"])
    except (KeyError, ValueError):
        return 0
    return max(0, int((finished - started).total_seconds() * 1000))


def _parse_docker_time(value: str) -> datetime:
    # Docker gives nanoseconds ("2026-11-26T08:10:24.158000342Z"); Python parses at most microseconds.
    head, _, fraction = value.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(fraction + '000000')[:6]}+00:00")
