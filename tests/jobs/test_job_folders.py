"""A job's host-side folders and gateway socket: shared with the container's user only, made without following
links, under a work root that belongs to the worker alone. Real runner, real Docker engine.
"""
import os
import stat
import subprocess
import threading

import pytest

from jobs.metering.gateway import GatewayConfig, JobGateway
from jobs.models import Job
from jobs.runner import run_job
from tests.support.jobs import make_job, make_zip
from tests.support.waiting import wait_for

# The runner's own threads (the gateway's, the job's event writer) write to the database: the tests' rows must be
# committed, and no test transaction may hold the write lock they wait for. Every test here runs the real runner,
# most of them a container: the slow tier.
pytestmark = [pytest.mark.usefixtures("served_models"), pytest.mark.django_db(transaction=True), pytest.mark.slow]

OTHER_UID = 12345
# Processes of other uids cannot read the virtualenv's interpreter under /root; the system's will do.
SYSTEM_PYTHON = "/usr/bin/python3"

LOOK_AROUND = """
import os, resource, stat

def describe(path):
    info = os.stat(path)
    return {"mode": stat.S_IMODE(info.st_mode), "uid": info.st_uid, "gid": info.st_gid}

def handler(event, context):
    return {
        "code": describe("/job/code"), "main": describe("/job/code/main.py"), "lib": describe("/job/code/lib"),
        "module": describe("/job/code/lib/helper.py"), "run": describe("/run/ainode"),
        "socket": describe("/run/ainode/gateway.sock"), "input": describe("/job/input"),
        "payload": describe("/job/input/payload.json"), "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
    }
"""


def run(job: Job) -> Job:
    run_job(job.pk)
    return Job.objects.get(pk=job.pk)


def zipped_job(account, settings):
    """A job whose code has a sub-folder and whose input is large enough to travel as a file."""
    from jobs import services

    settings.JOB_PAYLOAD_ENV_MAX_BYTES = 10
    archive = make_zip({"main.py": LOOK_AROUND, "lib/helper.py": "X = 1\n"})
    function = services.deploy_function(owner=account.user, name="look-around", code=archive, filename="code.zip")
    return Job.objects.create(owner=account.user, function=function, function_version=function.current_version,
                              model_id="smollm2:135m", node="test-node", queue="jobs",
                              input_data={"padding": "x" * 100}, memory_mb=function.memory_mb,
                              timeout_seconds=function.timeout_seconds)


def test_code_input_and_socket_are_shared_with_the_containers_user_only(alice, settings, job_work_root):
    job = run(zipped_job(alice, settings))
    assert job.status == "succeeded", (job.error_code, job.error_message, job.stderr)
    seen = job.result
    for name in ("code", "lib", "input", "run"):
        assert seen[name] == {"mode": 0o750, "uid": 0, "gid": 10001}, name
    for name in ("main", "module", "payload"):
        assert seen[name] == {"mode": 0o640, "uid": 0, "gid": 10001}, name
    assert seen["socket"] == {"mode": 0o660, "uid": 0, "gid": 10001}


def test_a_job_container_may_open_only_a_bounded_number_of_files(alice, settings, job_work_root):
    settings.JOB_NOFILE_LIMIT = 100
    job = run(zipped_job(alice, settings))
    assert job.status == "succeeded", (job.error_code, job.error_message, job.stderr)
    assert job.result["nofile"] == [100, 100]


def test_the_job_folder_is_removed_when_the_job_ends(alice, job_work_root):
    code = "import os\ndef handler(event, context):\n    return sorted(os.listdir('/job/code'))\n"
    job = run(make_job(alice, code))
    assert job.status == "succeeded", job.error_message
    assert list(job_work_root.iterdir()) == []


# --- the work root --------------------------------------------------------------------------------------------

def assert_refused_before_running(job: Job, *, mentions: str) -> None:
    assert job.status == "failed"
    assert job.error_code == "work_root_unsafe"
    assert mentions in job.error_message
    assert job.container_id == ""


def test_a_work_root_other_users_can_write_to_is_refused(alice, settings, short_tmp):
    root = short_tmp / "jobs"
    root.mkdir()
    root.chmod(0o777)
    settings.JOB_WORK_ROOT = root
    job = run(make_job(alice, "def handler(event, context):\n    return 1\n"))
    assert_refused_before_running(job, mentions="writable by other users")
    assert list(root.iterdir()) == []


def test_a_work_root_owned_by_another_user_is_refused(alice, settings, short_tmp):
    """As when another local user pre-created the /tmp fallback to swap a job's folders for links."""
    root = short_tmp / "jobs"
    root.mkdir(mode=0o755)
    os.chown(root, OTHER_UID, OTHER_UID)
    settings.JOB_WORK_ROOT = root
    job = run(make_job(alice, "def handler(event, context):\n    return 1\n"))
    assert_refused_before_running(job, mentions=f"owned by uid {OTHER_UID}")
    assert list(root.iterdir()) == []


def test_a_work_root_that_is_a_link_is_refused(alice, settings, short_tmp):
    target = short_tmp / "elsewhere"
    target.mkdir(mode=0o700)
    (short_tmp / "jobs").symlink_to(target)
    settings.JOB_WORK_ROOT = short_tmp / "jobs"
    job = run(make_job(alice, "def handler(event, context):\n    return 1\n"))
    assert_refused_before_running(job, mentions="a link")
    assert list(target.iterdir()) == []


def test_a_work_root_in_a_folder_anyone_may_rename_in_is_refused(alice, settings, short_tmp):
    parent = short_tmp / "open"
    parent.mkdir()
    parent.chmod(0o777)  # writable by all and not sticky: another user could swap our root
    settings.JOB_WORK_ROOT = parent / "jobs"
    job = run(make_job(alice, "def handler(event, context):\n    return 1\n"))
    assert_refused_before_running(job, mentions="sticky")


@pytest.mark.parametrize("swap", ["owned by another user", "group-writable"])
def test_a_work_root_below_a_folder_another_user_controls_is_refused_whatever_the_depth(
        alice, settings, short_tmp, swap):
    """Not only the parent: a folder two levels up that another user owns (or may write in) lets them swap the
    whole path, and every write by path (the code, the SDK, the mounts) with it."""
    above = short_tmp / "theirs"
    above.mkdir(mode=0o755)
    if swap == "owned by another user":
        os.chown(above, OTHER_UID, OTHER_UID)
    else:
        above.chmod(0o775)
    (above / "ours").mkdir(mode=0o755)
    settings.JOB_WORK_ROOT = above / "ours" / "jobs"
    job = run(make_job(alice, "def handler(event, context):\n    return 1\n"))
    assert_refused_before_running(job, mentions=f"ancestor {above}")


def test_a_missing_work_root_is_created_for_the_worker_alone(alice, settings, short_tmp):
    settings.JOB_WORK_ROOT = short_tmp / "new" / "jobs"
    job = run(make_job(alice, "def handler(event, context):\n    return 1\n"))
    assert job.status == "succeeded", job.error_message
    info = os.lstat(settings.JOB_WORK_ROOT)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid()


def test_a_link_planted_where_a_job_folder_goes_is_not_followed(alice, job_work_root, short_tmp):
    victim = short_tmp / "victim"
    victim.mkdir()
    job = make_job(alice, "def handler(event, context):\n    return 1\n")
    (job_work_root / str(job.pk)).symlink_to(victim)
    job = run(job)
    assert_refused_before_running(job, mentions="already exists")
    assert list(victim.iterdir()) == []


# --- the result route -------------------------------------------------------------------------------------------

POST_RESULT = """
import http.client, socket, sys
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(sys.argv[1])
connection = Unix("localhost")
connection.request("POST", "/_job/result", b'{"result": "forged", "error": null}', {"Content-Type": "application/json"})
print(connection.getresponse().status)
"""


@pytest.fixture
def gateway(short_tmp):
    folder = short_tmp / "run"
    folder.mkdir()
    started = JobGateway(GatewayConfig(job_id="00000000-0000-0000-0000-000000000000", default_model="m"),
                         socket_dir=str(folder)).start()
    os.chmod(folder, 0o755)
    os.chmod(short_tmp, 0o755)
    yield started
    started.stop(drain_timeout=1)


def post_result_as(uid: int, socket_path: str) -> int:
    answer = subprocess.run([SYSTEM_PYTHON, "-c", POST_RESULT, socket_path], user=uid, group=uid,
                            capture_output=True, text=True, timeout=30)
    assert answer.returncode == 0, answer.stderr
    return int(answer.stdout)


def test_only_the_containers_user_may_report_the_result(gateway):
    assert post_result_as(OTHER_UID, gateway.socket_path) == 403
    assert post_result_as(os.geteuid(), gateway.socket_path) == 403
    assert not gateway.report.received
    assert post_result_as(10001, gateway.socket_path) == 200
    assert gateway.report.received and gateway.report.result == "forged"


def test_another_local_user_cannot_reach_a_running_jobs_socket(alice, transactional_db, job_work_root, short_tmp):
    """While a job runs, a process of another uid tries its gateway socket on the host."""
    short_tmp.chmod(0o755)
    job_work_root.chmod(0o755)  # what the default root under var/ often is: traversable by all
    code = "import time\ndef handler(event, context):\n    time.sleep(3)\n    return 1\n"
    job = make_job(alice, code)
    runner = threading.Thread(target=run_job, args=(job.pk,))
    runner.start()
    socket_path = job_work_root / str(job.pk) / "run" / "gateway.sock"
    wait_for(socket_path.exists, timeout=30, message="the job's gateway socket")
    probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1]); print('connected')\nexcept OSError as e: print(type(e).__name__)\n")
    answer = subprocess.run([SYSTEM_PYTHON, "-c", probe, str(socket_path)], user=OTHER_UID, group=OTHER_UID,
                            capture_output=True, text=True, timeout=30)
    runner.join(60)
    assert answer.stdout.strip() == "PermissionError", answer
    assert Job.objects.get(pk=job.pk).status == "succeeded"
