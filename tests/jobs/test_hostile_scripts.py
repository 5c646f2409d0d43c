"""Scripts that try to get out: the network, the file system, privileges, process counts, the result channel.

Every check runs inside the real job container. Network checks never send traffic off this machine: they show
the container has no interface but `lo` and no route, and try connections only to 127.0.0.1 (inside the
container that is its own loopback, where nothing listens).
"""
import json
import time

import pytest

from jobs.models import Job
from jobs.runner import run_job
from tests.support.containers import job_containers
from tests.support.jobs import make_job

# Every test runs on a cold container and on a pooled (warm) one.
pytestmark = pytest.mark.usefixtures("served_models", "execution")


def run(job: Job) -> Job:
    run_job(job.pk)
    job = Job.objects.get(pk=job.pk)
    return job


def run_ok(job: Job) -> Job:
    job = run(job)
    assert job.status == "succeeded", (job.error_code, job.error_message, job.stderr)
    return job


NETWORK_PROBE = """
import os, socket

def handler(event, context):
    with open('/proc/net/route') as handle:
        routes = handle.read().splitlines()[1:]
    attempts = {}
    for port in (80, 443, 2375, 5432, 5055, 6379):
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(2)
        try:
            probe.connect(('127.0.0.1', port))
            attempts[port] = 'connected'
        except OSError as exc:
            attempts[port] = type(exc).__name__
        finally:
            probe.close()
    return {
        'interfaces': sorted(os.listdir('/sys/class/net')),
        'routes': routes,
        'attempts': attempts,
        'dockerSocket': os.path.exists('/var/run/docker.sock') or os.path.exists('/run/docker.sock'),
    }
"""


def test_a_script_has_no_network_but_its_own_loopback(alice, job_work_root):
    job = run_ok(make_job(alice, NETWORK_PROBE))
    assert job.result["interfaces"] == ["lo"]
    assert job.result["routes"] == []  # no default route: nowhere to send a packet to
    # 127.0.0.1 in the container is its own loopback: the host's Redis, PostgreSQL and moto are not there.
    assert set(job.result["attempts"].values()) == {"ConnectionRefusedError"}
    assert job.result["dockerSocket"] is False


FILESYSTEM_PROBE = """
import errno, os

def try_write(path):
    try:
        with open(path, 'w') as handle:
            handle.write('x')
        return 'written'
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))

def handler(event, context):
    outside = ['/hacked', '/etc/hacked', '/usr/lib/hacked', '/root/hacked', '/var/tmp/hacked', '/home/hacked',
               '/job/hacked', '/job/code/main.py', '/job/code/new.py', '/opt/ainode/sdk.py', '/opt/ainode/evil.py',
               '/run/ainode/hacked', '/dev/hacked']
    inside = ['/tmp/ok', os.path.join(os.environ['OUTPUT_DIR'], 'ok')]
    return {
        'outside': {path: try_write(path) for path in outside},
        'inside': {path: try_write(path) for path in inside},
        'rootReadOnly': os.statvfs('/').f_flag & os.ST_RDONLY == os.ST_RDONLY,
        'codeReadOnly': os.statvfs('/job/code').f_flag & os.ST_RDONLY == os.ST_RDONLY,
        'tmpNoExec': os.statvfs('/tmp').f_flag & os.ST_NOEXEC == os.ST_NOEXEC,
    }
"""


def test_a_script_cannot_write_outside_tmp_and_its_output_dir(alice, job_work_root):
    job = run_ok(make_job(alice, FILESYSTEM_PROBE))
    outside = job.result["outside"]
    assert all(outcome in ("EROFS", "EACCES", "EPERM") for outcome in outside.values()), outside
    assert set(job.result["inside"].values()) == {"written"}
    assert job.result["rootReadOnly"] is True
    assert job.result["codeReadOnly"] is True
    assert job.result["tmpNoExec"] is True


def test_a_script_cannot_execute_a_program_it_wrote_to_tmp(alice, job_work_root):
    code = (
        "import os, shutil, subprocess\n"
        "def handler(event, context):\n"
        "    shutil.copy('/bin/true', '/tmp/mytrue')\n"
        "    os.chmod('/tmp/mytrue', 0o755)\n"
        "    try:\n"
        "        subprocess.run(['/tmp/mytrue'], check=True)\n"
        "        return 'executed'\n"
        "    except PermissionError:\n"
        "        return 'refused'\n"
    )
    job = run_ok(make_job(alice, code))
    assert job.result == "refused"


def test_tmp_is_bounded_in_size(alice, job_work_root, settings):
    code = (
        "import errno\n"
        "def handler(event, context):\n"
        "    written = 0\n"
        "    try:\n"
        "        with open('/tmp/fill', 'wb') as handle:\n"
        "            for _ in range(1000):\n"
        "                handle.write(b'x' * (1 << 20))\n"
        "                written += 1\n"
        "            handle.flush()\n"
        "    except OSError as exc:\n"
        "        return {'error': errno.errorcode[exc.errno], 'mb': written}\n"
        "    return {'error': None, 'mb': written}\n"
    )
    job = run_ok(make_job(alice, code, memory_mb=256))
    assert job.result["error"] == "ENOSPC"
    assert job.result["mb"] <= settings.JOB_TMPFS_MB


PRIVILEGE_PROBE = """
import os

def handler(event, context):
    with open('/proc/self/status') as handle:
        status = dict(line.split(':\\t', 1) for line in handle.read().splitlines() if ':\\t' in line)
    try:
        os.setuid(0)
        became_root = True
    except PermissionError:
        became_root = False
    return {
        'uid': os.getuid(), 'euid': os.geteuid(), 'gid': os.getgid(),
        'caps': {name: status[name].strip() for name in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb')},
        'noNewPrivs': status['NoNewPrivs'].strip(),
        'becameRoot': became_root,
    }
"""


def test_a_script_runs_as_an_unprivileged_user_with_no_capabilities(alice, job_work_root):
    job = run_ok(make_job(alice, PRIVILEGE_PROBE))
    assert (job.result["uid"], job.result["euid"], job.result["gid"]) == (10001, 10001, 10001)
    assert job.result["caps"] == {name: "0000000000000000"
                                  for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
    assert job.result["noNewPrivs"] == "1"
    assert job.result["becameRoot"] is False


def test_the_number_of_processes_is_bounded(alice, job_work_root, settings):
    code = (
        "import errno, os, time\n"
        "def handler(event, context):\n"
        "    children, error = 0, None\n"
        "    for _ in range(10 * %d):\n"
        "        try:\n"
        "            pid = os.fork()\n"
        "        except OSError as exc:\n"
        "            error = errno.errorcode[exc.errno]\n"
        "            break\n"
        "        if pid == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        children += 1\n"
        "    return {'children': children, 'error': error}\n"
    ) % settings.JOB_PIDS_LIMIT
    job = run_ok(make_job(alice, code, timeout_seconds=30))
    assert job.result["error"] == "EAGAIN"
    assert 0 < job.result["children"] < settings.JOB_PIDS_LIMIT


def test_a_fork_bomb_is_contained_and_the_job_still_ends(alice, job_work_root, docker_client):
    code = (
        "import os, time\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        time.sleep(0.01)\n"
    )
    started = time.monotonic()
    job = run(make_job(alice, code, timeout_seconds=3))
    assert job.status == "timed_out"
    assert time.monotonic() - started < 30
    assert job_containers(docker_client, job.pk) == []
    # The machine is fine afterwards: the next job runs normally.
    follow_up = run_ok(make_job(alice, "def handler(event, context):\n    return 'fine'\n"))
    assert follow_up.result == "fine"


def test_a_result_larger_than_the_limit_fails_the_job_as_result_too_large(alice, job_work_root, settings):
    settings.JOB_RESULT_MAX_BYTES = 4096
    job = run(make_job(alice, "def handler(event, context):\n    return 'x' * 100_000\n"))
    assert job.status == "failed"
    assert job.error_code == "result_too_large"
    assert job.result is None


def test_a_result_at_the_default_limit_is_refused_too(alice, job_work_root, settings):
    size = settings.JOB_RESULT_MAX_BYTES + 1
    job = run(make_job(alice, f"def handler(event, context):\n    return 'y' * {size}\n"))
    assert (job.status, job.error_code) == ("failed", "result_too_large")



def _strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_result_report_with_nan_neither_breaks_the_job_row_nor_the_apis_json(alice, job_work_root):
    # The script skips the runtime (which refuses NaN) and posts its own report to the gateway.
    code = (
        "import os, transport\n"
        "connection, prefix = transport.connect(os.environ['AI_ENDPOINT'], timeout=5)\n"
        "connection.request('POST', prefix + '/_job/result', b'{\"result\": NaN, \"error\": null}',\n"
        "                   {'Content-Type': 'application/json'})\n"
        "connection.getresponse().read()\n"
        "os._exit(0)\n"
    )
    job = run(make_job(alice, code))
    assert job.error_code != "internal_error"
    _strict_json(alice.client.get(f"/status/{job.pk}").content.decode())
