"""A look at what the Docker engine did for a job (its labelled containers, its event log), warm pools of real
containers, and one direction of a TCP relay."""
from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

ENGINE_CALL_SECONDS = 10.0  # a container's create and start on a loaded engine


# --- Docker -----------------------------------------------------------------------------------------------------

def job_containers(docker_client: Any, job_id: Any) -> list[Any]:
    """The containers (running or not) that carry job `job_id`'s label."""
    from jobs.sandbox.docker_backend import JOB_LABEL

    return docker_client.containers.list(all=True, filters={"label": f"{JOB_LABEL}={job_id}"}, ignore_removed=True)


def container_creations(docker_client: Any, job_id: Any, since: float) -> int:
    """How many containers the engine created for job `job_id` since `since` (a Unix time): its own event log."""
    from jobs.sandbox.docker_backend import JOB_LABEL

    events = docker_client.events(since=int(since) - 1, until=int(time.time()) + 1, decode=True,
                                  filters={"label": f"{JOB_LABEL}={job_id}", "type": "container", "event": "create"})
    return sum(1 for _ in events)


def remove_containers_of_jobs_in_the_database() -> None:
    """A worker killed (by the test, or after a failure) leaves its job's container behind; never let one outlive
    the test that made its job."""
    from jobs.models import Job
    from jobs.sandbox.docker_backend import DockerBackend

    backend = DockerBackend()
    for job_id in Job.objects.values_list("pk", flat=True):
        backend.remove_job_containers(str(job_id))


# --- warm containers --------------------------------------------------------------------------------------------

def make_warm_pool(root: Path, *, size: int = 0, max_age_seconds: float = 600.0, primed: bool = False) -> Any:
    """A warm pool of real containers under `root`, built as the worker builds its own (not yet started). A primed
    pool makes a container on the spot when none of the job's profile is ready (see `primed_pool_class`)."""
    from jobs.sandbox.docker_backend import DockerBackend
    from jobs.sandbox.spec import make_workdir_folders, warm_spec
    from jobs.sandbox.warm_pool import WarmPool

    cls = primed_pool_class() if primed else WarmPool
    return cls(size=size, root=root, spec_for=warm_spec, layout=make_workdir_folders, backend_factory=DockerBackend,
               max_age_seconds=max_age_seconds)


def primed_pool_class() -> type:
    """For tests only: a WarmPool that, when no container of the job's profile is ready, makes one on the spot, so
    that every job of the test runs on a pooled container. Its `served` holds the containers it handed out."""
    from jobs.sandbox.warm_pool import WarmPool

    class PrimedPool(WarmPool):
        def __init__(self, **kwargs: Any):
            super().__init__(**kwargs)
            self.served: set[str] = set()

        def take(self, profile: Any, *, owner: object = None) -> Any:
            if not self.ready_count(profile):
                self.fill(profile)
            slot = super().take(profile, owner=owner)
            self.served.add(slot.container_id)
            return slot

    return PrimedPool


def pump(source: socket.socket, target: socket.socket) -> None:
    """Copy `source` into `target` until either end closes, then shut both (one direction of a TCP relay)."""
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
