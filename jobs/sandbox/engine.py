"""This worker process's connection to the Docker engine and its warm pool: made once, kept across jobs."""
import os

from django.conf import settings

from . import warm_pool
from .docker_backend import DockerBackend
from .pool_containers import reap_orphans
from .spec import default_profile, make_workdir_folders, warm_spec
from .warm_pool import WarmPool

_backends: dict[tuple[int, str], DockerBackend] = {}


def shared_backend() -> DockerBackend:
    """One engine client per process and engine address, kept across jobs: a new client first asks the engine for
    its API version, a round trip on every job's path. A forked child makes its own."""
    key = (os.getpid(), settings.DOCKER_HOST)
    if key not in _backends:
        _backends[key] = new_backend()
    return _backends[key]


def new_backend() -> DockerBackend:
    return DockerBackend(base_url=settings.DOCKER_HOST or None)


def start_warm_pool() -> WarmPool | None:
    """Start this process's warm pool (when WARM_POOL_SIZE > 0), warming the default profile."""
    if settings.WARM_POOL_SIZE <= 0 or warm_pool.current() is not None:
        return warm_pool.current()
    pool = WarmPool(
        size=settings.WARM_POOL_SIZE, root=settings.JOB_WORK_ROOT, spec_for=warm_spec, layout=make_workdir_folders,
        backend_factory=new_backend, max_age_seconds=settings.WARM_POOL_MAX_AGE_SECONDS,
        max_profiles=settings.WARM_POOL_PROFILES, owners_to_warm=settings.WARM_POOL_PROFILE_OWNERS,
    )
    warm_pool.install(pool.start([default_profile()]))
    return pool


def stop_warm_pool() -> None:
    pool = warm_pool.install(None)
    if pool is not None:
        pool.stop()


def reap_orphan_containers() -> int:
    """Remove the warm containers of this host's dead workers."""
    return reap_orphans(new_backend(), root=settings.JOB_WORK_ROOT)
