"""`ainode`, the command-line client, against the live API: what a person reads, what a script parses (--json),
and exit codes that say what happened. Jobs that must run do so on a real Celery worker in Docker, calling the
real local model."""
import json
import os
import pty
import subprocess
import uuid

import pytest

from jobs.models import Function, Job

ECHO = "def handler(event, context):\n    return {'echo': event}\n"
ASK = ("import ai_client\n"
       "def handler(event, context):\n"
       "    answer = ai_client.generate(event['prompt'], max_tokens=8, temperature=0, seed=1)\n"
       "    print('asked the model')\n"
       "    return {'answer': answer, 'usage': ai_client.usage()}\n")


@pytest.fixture
def project(tmp_path):
    """A function's folder: main.py and a module of its own."""
    folder = tmp_path / "echo"
    folder.mkdir()
    (folder / "main.py").write_text("from helper import wrap\n\ndef handler(event, context):\n"
                                    "    return wrap(event)\n")
    (folder / "helper.py").write_text("def wrap(event):\n    return {'echo': event}\n")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "helper.cpython-311.pyc").write_bytes(b"\0")
    return folder


@pytest.fixture
def deployed(ainode, project, served_models):
    result = ainode("deploy", str(project), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- deploy -----------------------------------------------------------------------------------------------------

def test_deploy_a_folder_prints_the_new_function(ainode, project, api):
    result = ainode("deploy", str(project), "--memory", "128", "--timeout", "30", "--budget", "500")
    assert result.returncode == 0, result.stderr
    function = Function.objects.get(owner=api.account.user)
    assert result.stdout.startswith(f"deployed function echo v1 ({function.pk})")
    assert "memory:       128 MB" in result.stdout
    assert (function.memory_mb, function.timeout_seconds, function.token_budget) == (128, 30, 500)
    assert sorted(function.current_version.files) == ["helper.py", "main.py"]


def test_deploying_the_same_name_again_makes_a_new_version(ainode, project, api):
    assert ainode("deploy", str(project)).returncode == 0
    (project / "main.py").write_text(ECHO)
    result = ainode("deploy", str(project), "--json")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert (body["name"], body["version"]) == ("echo", 2)
    assert Function.objects.filter(owner=api.account.user).count() == 1


def test_deploy_a_single_file_under_a_name(ainode, tmp_path, api):
    script = tmp_path / "main.py"
    script.write_text(ECHO)
    result = ainode("deploy", str(script), "--name", "single")
    assert result.returncode == 0, result.stderr
    assert Function.objects.get(owner=api.account.user).name == "single"


def test_deploying_code_the_api_refuses_exits_3_with_its_reason(ainode, tmp_path):
    script = tmp_path / "main.py"
    script.write_text("def handler(:\n")
    result = ainode("deploy", str(script))
    assert result.returncode == 3
    assert "syntax_error" in result.stderr


def test_deploying_a_folder_without_main_py_is_a_usage_error(ainode, tmp_path):
    result = ainode("deploy", str(tmp_path))
    assert result.returncode == 2
    assert "no main.py" in result.stderr


# --- run, status, jobs, cancel (no worker: jobs stay queued) ----------------------------------------------------

def test_run_async_prints_the_job_and_submits_the_input(ainode, deployed, tmp_path):
    payload = tmp_path / "input.json"
    payload.write_text('{"n": 7}')
    result = ainode("run", "echo", "--input", f"@{payload}", "--model", "model-a", "--async")
    assert result.returncode == 0, result.stderr
    job = Job.objects.get()
    assert result.stdout.strip() == f"job {job.pk} queued; follow it with: ainode status {job.pk}"
    assert (job.input_data, job.model_id, str(job.function_id)) == ({"n": 7}, "model-a", deployed["functionId"])


def test_run_reads_input_from_stdin_and_answers_json(ainode, deployed):
    result = ainode("run", deployed["functionId"], "--input", "@-", "--async", "--json", stdin='[1, 2]')
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["status"] == "ACCEPTED"
    assert Job.objects.get(pk=body["jobId"]).input_data == [1, 2]


def test_input_that_is_not_json_is_a_usage_error(ainode, deployed):
    result = ainode("run", "echo", "--input", "{nope", "--async")
    assert result.returncode == 2
    assert "not JSON" in result.stderr
    assert Job.objects.count() == 0


def test_status_of_a_queued_job_exits_8(ainode, deployed):
    job_id = json.loads(ainode("run", "echo", "--async", "--json").stdout)["jobId"]
    result = ainode("status", job_id)
    assert result.returncode == 8
    assert f"job {job_id} is queued" in result.stdout


def test_waiting_can_be_bounded_and_then_exits_8(ainode, deployed):
    result = ainode("run", "echo", "--wait", "1")
    assert result.returncode == 8
    assert "is queued" in result.stdout
    assert result.stderr == ""  # not a terminal: no progress line


def test_jobs_lists_your_jobs_as_a_table_or_json(ainode, deployed):
    ids = [json.loads(ainode("run", "echo", "--async", "--json").stdout)["jobId"] for _ in range(3)]
    table = ainode("jobs")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["JOB", "STATUS", "MODEL", "TOKENS", "COST", "DURATION", "CREATED"]
    assert [line.split()[0] for line in lines[1:]] == ids[::-1]
    listed = json.loads(ainode("jobs", "--json", "--limit", "2").stdout)
    assert [job["jobId"] for job in listed] == ids[:0:-1]


def test_cancel_cancels_a_queued_job_and_a_second_cancel_is_refused(ainode, deployed):
    job_id = json.loads(ainode("run", "echo", "--async", "--json").stdout)["jobId"]
    first = ainode("cancel", job_id)
    assert (first.returncode, first.stdout.strip()) == (0, f"job {job_id} cancelled")
    again = ainode("cancel", job_id)
    assert again.returncode == 3
    assert "job_finished" in again.stderr
    assert ainode("status", job_id).returncode == 1


def test_an_unknown_job_exits_4(ainode, deployed):
    result = ainode("status", str(uuid.uuid4()))
    assert result.returncode == 4
    assert "job_not_found" in result.stderr


def test_an_unknown_function_name_exits_4(ainode, deployed):
    assert ainode("run", "no-such-function").returncode == 4


def test_a_bad_key_exits_5_and_no_key_too(ainode):
    bad = ainode("jobs", env={"AINODE_API_KEY": "ain_nope"})
    assert bad.returncode == 5
    assert "bad_api_key" in bad.stderr
    assert ainode("jobs", env={"AINODE_API_KEY": ""}).returncode == 5


def test_flags_override_the_environment(ainode, api):
    result = ainode("jobs", "--url", api.url, "--key", api.key, env={"AINODE_URL": "http://127.0.0.1:9",
                                                                     "AINODE_API_KEY": "ain_nope"})
    assert result.returncode == 0, result.stderr


def test_an_api_that_cannot_be_reached_exits_7(ainode):
    result = ainode("jobs", env={"AINODE_URL": "http://127.0.0.1:9"})
    assert result.returncode == 7
    assert "cannot reach" in result.stderr


def test_charlie_cannot_see_or_cancel_alices_jobs(ainode, deployed, charlie):
    job_id = json.loads(ainode("run", "echo", "--async", "--json").stdout)["jobId"]
    as_charlie = {"AINODE_API_KEY": charlie.key}
    assert ainode("status", job_id, env=as_charlie).returncode == 4
    assert ainode("cancel", job_id, env=as_charlie).returncode == 4
    assert json.loads(ainode("jobs", "--json", env=as_charlie).stdout) == []


# --- models and usage -------------------------------------------------------------------------------------------

def test_models_lists_what_the_node_serves(ainode, real_models):
    result = ainode("models")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["MODEL", "STATUS", "NODE"]
    assert any(line.split()[:2] == ["smollm2:135m", "available"] for line in lines[1:])
    assert json.loads(ainode("models", "--json").stdout)["models"]


def test_usage_shows_totals_by_model(ainode, deployed):
    for _ in range(2):
        ainode("run", "echo", "--async", "--model", "model-b")
    result = ainode("usage", "--by", "model")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["MODEL", "JOBS", "CALLS"]
    assert lines[1].split()[:2] == ["model-b", "2"]
    assert ": 2 jobs, 0 calls, 0 tokens" in result.stdout
    body = json.loads(ainode("usage", "--by", "function", "--json").stdout)
    assert body["groupBy"] == "function"
    assert body["results"][0]["functionName"] == "echo"


def test_a_bad_date_exits_3(ainode):
    result = ainode("usage", "--from", "yesterday")
    assert result.returncode == 3
    assert "invalid_date" in result.stderr


# --- jobs that run, on a real worker with the real model --------------------------------------------------------

@pytest.fixture
def running_worker(worker, _isolated_broker, real_models):
    return worker(_isolated_broker)


def test_run_waits_for_the_result_and_prints_it(ainode, running_worker, tmp_path):
    (tmp_path / "main.py").write_text(ASK)
    assert ainode("deploy", str(tmp_path / "main.py"), "--name", "ask").returncode == 0
    result = ainode("run", "ask", "--input", '{"prompt": "The sky is"}')
    assert result.returncode == 0, (result.stdout, result.stderr, running_worker.log()[-3000:])
    job = Job.objects.get()
    assert result.stdout.splitlines()[0].startswith(f"job {job.pk} succeeded in ")
    assert f"tokens: {job.prompt_tokens} prompt + {job.completion_tokens} completion" in result.stdout
    assert job.llm_calls == 1 and job.completion_tokens >= 1
    assert "asked the model" in result.stdout
    assert result.stderr == ""


def test_a_failing_job_exits_1_and_shows_its_error(ainode, running_worker, tmp_path):
    (tmp_path / "main.py").write_text("def handler(event, context):\n    raise ValueError('no')\n")
    assert ainode("deploy", str(tmp_path / "main.py"), "--name", "fails").returncode == 0
    result = ainode("run", "fails", "--json")
    assert result.returncode == 1, result.stderr
    body = json.loads(result.stdout)
    assert (body["status"], body["errorCode"]) == ("failed", "script_error")


CHATTY = ("import ai_client, sys\n"
          "def handler(event, context):\n"
          "    print('before the call', flush=True)\n"
          "    print('a warning', file=sys.stderr, flush=True)\n"
          "    answer = ai_client.generate('The sky is', max_tokens=8, temperature=0, seed=1)\n"
          "    print('after the call', flush=True)\n"
          "    return {'answer': answer}\n")


def test_run_follow_prints_the_output_as_it_comes_and_then_the_metered_result(ainode, running_worker, tmp_path):
    (tmp_path / "main.py").write_text(CHATTY)
    assert ainode("deploy", str(tmp_path / "main.py"), "--name", "chatty").returncode == 0

    result = ainode("run", "chatty", "--follow")

    assert result.returncode == 0, (result.stdout, result.stderr, running_worker.log()[-3000:])
    job = Job.objects.get()
    lines = result.stdout.splitlines()
    assert lines[:2] == ["before the call", "after the call"]
    assert lines[2].startswith(f"job {job.pk} succeeded in ")
    assert f"tokens: {job.prompt_tokens} prompt + {job.completion_tokens} completion" in result.stdout
    assert job.llm_calls == 1 and job.completion_tokens >= 1
    assert "a warning" in result.stderr
    assert "stdout:" not in result.stdout  # shown once, as it came, not again at the end


def test_logs_follow_replays_a_finished_job_and_ends_with_its_status_line(ainode, running_worker, tmp_path):
    (tmp_path / "main.py").write_text(CHATTY)
    assert ainode("deploy", str(tmp_path / "main.py"), "--name", "chatty").returncode == 0
    ran = json.loads(ainode("run", "chatty", "--json").stdout)

    followed = ainode("logs", ran["jobId"], "--follow")
    plain = ainode("logs", ran["jobId"])

    assert followed.returncode == 0 and plain.returncode == 0, (followed.stderr, plain.stderr)
    assert followed.stdout.splitlines() == ["before the call", "after the call"]
    status_line = followed.stderr.splitlines()[-1]
    assert status_line.startswith("succeeded")
    assert f"{ran['promptTokens']} prompt + {ran['completionTokens']} completion tokens" in status_line
    assert plain.stdout.splitlines() == ["stdout:", "  before the call", "  after the call", "stderr:", "  a warning"]


def test_logs_of_another_users_job_exits_4(ainode, running_worker, tmp_path, charlie, api):
    (tmp_path / "main.py").write_text(ECHO)
    assert ainode("deploy", str(tmp_path / "main.py"), "--name", "echo").returncode == 0
    job_id = json.loads(ainode("run", "echo", "--async", "--json").stdout)["jobId"]

    as_charlie = {"AINODE_API_KEY": charlie.key}
    assert ainode("logs", job_id, "--follow", env=as_charlie).returncode == 4
    assert ainode("logs", job_id, env=as_charlie).returncode == 4


def test_a_progress_line_is_drawn_on_a_terminal(api, running_worker, tmp_path, served_models):
    from tests.cli.conftest import AINODE

    (tmp_path / "main.py").write_text("import time\ndef handler(event, context):\n    time.sleep(2)\n"
                                      "    return 1\n")
    env = {**os.environ, "AINODE_URL": api.url, "AINODE_API_KEY": api.key}
    assert subprocess.run([str(AINODE), "deploy", str(tmp_path / "main.py"), "--name", "slow"], env=env,
                          capture_output=True).returncode == 0
    leader, follower = pty.openpty()
    process = subprocess.run([str(AINODE), "run", "slow"], env=env, stdout=subprocess.PIPE, stderr=follower,
                             timeout=120)
    os.close(follower)
    drawn = b""
    try:
        while chunk := os.read(leader, 4096):
            drawn += chunk
    except OSError:  # the terminal's other end is closed: all read
        pass
    os.close(leader)
    assert process.returncode == 0, process.stdout
    assert b"\r| job " in drawn or b"\r/ job " in drawn or b"\r- job " in drawn
    assert b"running" in drawn or b"queued" in drawn
    assert b"| job" not in process.stdout


# --- quotas -----------------------------------------------------------------------------------------------------

def test_usage_shows_the_quota_and_a_refused_run_exits_6(ainode, deployed, api):
    from decimal import Decimal

    from accounts.models import Quota
    from billing.models import ModelPrice

    ModelPrice.objects.create(model_id="model-a", price_per_1k_prompt=Decimal("1"),
                              price_per_1k_completion=Decimal("2"))
    Quota.objects.create(user=api.account.user, monthly_cost=Decimal("1"), max_concurrent_jobs=5)
    assert ainode("run", "echo", "--model", "model-a", "--budget", "100", "--async").returncode == 0
    refused = ainode("run", "echo", "--model", "model-a", "--budget", "1000", "--async")
    assert refused.returncode == 6
    assert "quota_exceeded" in refused.stderr
    result = ainode("usage")
    assert result.returncode == 0, result.stderr
    assert "  USD: 0.00 used of 1.00, 0.20 held by jobs queued or running; 0.80 left" in result.stdout
    assert "  jobs at once: 1 used of 5; 4 left" in result.stdout

