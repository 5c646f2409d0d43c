"""The hardened container of a job, cold or warm: its resource profile, its folders on the host and what it mounts
from them, its environment, and its limits. One spec for both paths, so a warm container is hardened exactly as a
cold one."""
import json
import shutil
from contextlib import ExitStack
from pathlib import Path

from django.conf import settings

from ..code_archive import extract_archive
from ..models import Job, Runtime
from .docker_backend import ContainerSpec
from .layers import LocalLayer
from .runtime_user import RUNTIME_USER
from .warm_pool import Profile
from .workdir import JobFolders, create_job_folders, disk_space_checked, share_tree, write_shared_file

SDK_DIR = Path(__file__).resolve().parent.parent.parent / "sdk"
CONTAINER_CODE_DIR = "/job/code"
CONTAINER_SDK_DIR = "/opt/ainode"
CONTAINER_LAYER_DIR = "/opt/layer"
CONTAINER_SOCKET_DIR = "/run/ainode"
CONTAINER_OUTPUT_DIR = "/job/out"
CONTAINER_INPUT_FILE = "/job/input/payload.json"
# Names the platform sets in the container: a function's own env may not override them.
RESERVED_ENV = {"JOB_ID", "FUNCTION_ID", "LLM_MODEL", "AI_ENDPOINT", "OUTPUT_DIR", "PAYLOAD", "PAYLOAD_FILE",
                "PYTHONPATH", "NODE_PATH", "CODE_DIR", "HOME"}
# Each runtime's command, for a cold container (runs the job) and a warm one (waits for a job, then runs it). The
# hardening is the same for all: only the command differs.
COMMANDS: dict[str, dict[str, list[str]]] = {
    Runtime.PYTHON: {"cold": ["python3", "-B", f"{CONTAINER_SDK_DIR}/runner.py"],
                     "warm": ["python3", "-B", f"{CONTAINER_SDK_DIR}/warm.py"]},
    Runtime.NODE: {"cold": ["node", f"{CONTAINER_SDK_DIR}/node/runner.js"],
                   "warm": ["node", f"{CONTAINER_SDK_DIR}/node/warm.js"]},
}


def job_profile(job: Job, layer: LocalLayer | None = None) -> Profile:
    """The profile of `job`'s container, with its dependency layer on this host (jobs.sandbox.layers.local_layer)."""
    return profile_of(memory_mb=job.memory_mb, layer=layer, runtime=job.function_version.runtime)


def default_profile() -> Profile:
    """The profile of a job of a function with the default memory: the one a pool warms from the start."""
    return profile_of(memory_mb=settings.JOB_DEFAULT_MEMORY_MB)


def profile_of(*, memory_mb: int, layer: LocalLayer | None = None, runtime: str = Runtime.PYTHON) -> Profile:
    return Profile(image=settings.JOB_RUNTIME_IMAGE, memory_bytes=memory_mb * 1024 * 1024,
                   nano_cpus=int(settings.JOB_CPUS * 1_000_000_000), pids_limit=settings.JOB_PIDS_LIMIT,
                   tmpfs_mb=settings.JOB_TMPFS_MB, nofile_limit=settings.JOB_NOFILE_LIMIT,
                   layer=str(layer.path) if layer else "", preload=layer.modules if layer else (),
                   runtime=str(runtime))


def prepare_workdir(job: Job, cleanup: ExitStack) -> JobFolders:
    """Lay out the job's code, input, SDK and socket folders, readable (not writable) by the container's user only;
    the folder is removed when `cleanup` closes."""
    folders = make_workdir_folders(settings.JOB_WORK_ROOT / str(job.id), cleanup=cleanup)
    fill_workdir(job, folders)
    return folders


def make_workdir_folders(path: Path, *, cleanup: ExitStack | None = None) -> JobFolders:
    """The folders a job container mounts at `path` (a job's, or a warm slot's): code, input, run (the gateway's
    socket, a warm slot's start FIFO) and sdk, made safely by `workdir`, with the SDK copied in."""
    with disk_space_checked(path.parent):
        folders = create_job_folders(path.parent, path.name)
        if cleanup is not None:
            cleanup.callback(shutil.rmtree, folders.path, ignore_errors=True)
        # The SDK is mounted from the job's folder, not from the code checkout: the engine resolves bind mounts on
        # its own host, and a worker running in a container shares only JOB_WORK_ROOT with it.
        shutil.copytree(SDK_DIR, folders.sdk, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                        dirs_exist_ok=True)
        share_tree(folders.sdk)
    return folders


def folders_at(path: Path) -> JobFolders:
    return JobFolders(path=path, code=path / "code", input=path / "input", run=path / "run", sdk=path / "sdk")


def fill_workdir(job: Job, folders: JobFolders) -> None:
    """The job's own code and input, in folders made by `make_workdir_folders`."""
    with disk_space_checked(folders.path):
        extract_archive(bytes(job.function_version.archive), str(folders.code))
        share_tree(folders.code)
        payload = json.dumps(job.input_data)
        if len(payload.encode()) > settings.JOB_PAYLOAD_ENV_MAX_BYTES:
            write_shared_file(folders.input, "payload.json", payload.encode())


def container_spec(job: Job, folders: JobFolders, profile: Profile | None = None) -> ContainerSpec:
    """The container of `job` in `folders`, of `profile` (by default its profile without a layer)."""
    profile = profile or job_profile(job)
    env = {key: str(value) for key, value in (job.function.env or {}).items() if key not in RESERVED_ENV}
    env.update({
        "JOB_ID": str(job.id),
        "FUNCTION_ID": str(job.function_id),
        "LLM_MODEL": job.model_id,
        "AI_ENDPOINT": f"unix://{CONTAINER_SOCKET_DIR}/gateway.sock",
        "OUTPUT_DIR": CONTAINER_OUTPUT_DIR,
        "CODE_DIR": CONTAINER_CODE_DIR,
        **module_path(profile),
        "HOME": "/tmp",
    })
    with_input = (folders.input / "payload.json").exists()
    if with_input:
        env["PAYLOAD_FILE"] = CONTAINER_INPUT_FILE
    else:
        env["PAYLOAD"] = json.dumps(job.input_data)
    return hardened_spec(profile, folders.path, job_id=str(job.id), env=env, with_input=with_input,
                         command=COMMANDS[profile.runtime]["cold"], timeout_seconds=job.timeout_seconds)


def warm_spec(profile: Profile, slot: Path) -> ContainerSpec:
    """A pool container of `profile` in the slot folder `slot`: its runtime waits there for a job's environment."""
    env = {**module_path(profile), "HOME": "/tmp"}
    if profile.preload:
        env["AINODE_PRELOAD"] = ",".join(profile.preload)
    return hardened_spec(profile, slot, job_id="", env=env, with_input=True,
                         command=COMMANDS[profile.runtime]["warm"], timeout_seconds=0)


def module_path(profile: Profile) -> dict[str, str]:
    """Where the runtime of `profile` finds modules: the SDK first (a package of the layer cannot shadow the
    runtime), then the layer's packages (a node layer's are in its node_modules folder)."""
    if profile.runtime == Runtime.NODE:
        layer = f":{CONTAINER_LAYER_DIR}/node_modules" if profile.layer else ""
        return {"NODE_PATH": f"{CONTAINER_SDK_DIR}/node{layer}"}
    return {"PYTHONPATH": f"{CONTAINER_SDK_DIR}:{CONTAINER_LAYER_DIR}" if profile.layer else CONTAINER_SDK_DIR}


def hardened_spec(profile: Profile, workdir: Path, *, job_id: str, env: dict[str, str], with_input: bool,
                  command: list[str], timeout_seconds: float) -> ContainerSpec:
    """The one container spec of a job, cold or warm: mounts from the folders of `workdir` (see
    `make_workdir_folders`), read-only; the limits of `profile`."""
    folders = folders_at(workdir)
    binds = {
        str(folders.code): {"bind": CONTAINER_CODE_DIR, "mode": "ro"},
        str(folders.sdk): {"bind": CONTAINER_SDK_DIR, "mode": "ro"},
        str(folders.run): {"bind": CONTAINER_SOCKET_DIR, "mode": "ro"},
    }
    if with_input:
        binds[str(folders.input)] = {"bind": "/job/input", "mode": "ro"}
    if profile.layer:
        binds[profile.layer] = {"bind": CONTAINER_LAYER_DIR, "mode": "ro"}
    tmpfs_size = f"size={profile.tmpfs_mb}m,mode=1777,noexec,nosuid,nodev"
    return ContainerSpec(
        job_id=job_id,
        image=profile.image,
        command=command,
        env=env,
        binds=binds,
        tmpfs={"/tmp": tmpfs_size, CONTAINER_OUTPUT_DIR: tmpfs_size},
        memory_bytes=profile.memory_bytes,
        nano_cpus=profile.nano_cpus,
        pids_limit=profile.pids_limit,
        nofile_limit=profile.nofile_limit,
        user=RUNTIME_USER,
        timeout_seconds=timeout_seconds,
        output_limit_bytes=settings.JOB_OUTPUT_LIMIT_BYTES,
    )
