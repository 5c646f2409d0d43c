"""The runner against the real Docker engine: the container contract that user scripts rely on.

`jobs.runner.run_job` is called in-process: the broker is not the point here (see test_celery_end_to_end).
"""
import hashlib
import json

import pytest

from jobs.models import Job
from jobs.runner import run_job
from tests.support.jobs import make_job, make_zip

pytestmark = pytest.mark.usefixtures("served_models")


def run(job: Job) -> Job:
    run_job(job.pk)
    job = Job.objects.get(pk=job.pk)
    assert job.deliveries == 1
    return job


def assert_succeeded(job: Job) -> None:
    assert job.status == "succeeded", (job.error_code, job.error_message, job.stderr)
    assert job.exit_code == 0


def test_it_calls_handler_with_the_event_and_context_and_keeps_its_return_value(alice, job_work_root):
    code = (
        "def handler(event, context):\n"
        "    return {'doubled': event['n'] * 2, 'context': context}\n"
    )
    job = run(make_job(alice, code, {"n": 21}, model_id="smollm2:135m"))
    assert_succeeded(job)
    assert job.result["doubled"] == 42
    context = job.result["context"]
    assert context["jobId"] == str(job.pk)
    assert context["functionId"] == str(job.function_id)
    assert context["modelId"] == "smollm2:135m"
    assert context["outputDir"] == "/job/out"


def test_it_calls_main_when_there_is_no_handler(alice, job_work_root):
    code = "def main(event, context):\n    return {'got': event, 'job': context['jobId']}\n"
    job = run(make_job(alice, code, ["a", 1]))
    assert_succeeded(job)
    assert job.result == {"got": ["a", 1], "job": str(job.pk)}


def test_a_handler_that_takes_only_the_event_is_called_with_it(alice, job_work_root):
    job = run(make_job(alice, "def handler(event):\n    return event.upper()\n", "shout"))
    assert_succeeded(job)
    assert job.result == "SHOUT"


def test_an_async_handler_is_awaited(alice, job_work_root):
    code = "import asyncio\nasync def handler(event, context):\n    await asyncio.sleep(0)\n    return event + 1\n"
    job = run(make_job(alice, code, 41))
    assert_succeeded(job)
    assert job.result == 42


def test_a_plain_script_runs_as_main_and_returns_through_the_sdk(alice, job_work_root):
    code = (
        "import sdk\n"
        "if __name__ == '__main__':\n"
        "    print('hello from a plain script')\n"
        "    sdk.return_output({'input': sdk.get_input(), 'context': sdk.get_context()})\n"
    )
    job = run(make_job(alice, code, {"q": "x"}, model_id="llama3.2:1b"))
    assert_succeeded(job)
    assert job.stdout == "hello from a plain script\n"
    assert job.result["input"] == {"q": "x"}
    assert job.result["context"]["jobId"] == str(job.pk)
    assert job.result["context"]["modelId"] == "llama3.2:1b"


def test_a_plain_script_without_output_has_a_null_result(alice, job_work_root):
    job = run(make_job(alice, "x = 1 + 1\n", None))
    assert_succeeded(job)
    assert job.result is None


def test_a_handler_may_return_through_return_output_instead(alice, job_work_root):
    code = "import sdk\ndef handler(event, context):\n    sdk.return_output({'via': 'sdk'})\n"
    job = run(make_job(alice, code))
    assert_succeeded(job)
    assert job.result == {"via": "sdk"}


def test_small_input_arrives_in_PAYLOAD(alice, job_work_root):
    code = (
        "import json, os\n"
        "def handler(event, context):\n"
        "    return {'payload': json.loads(os.environ['PAYLOAD']), 'file': os.environ.get('PAYLOAD_FILE')}\n"
    )
    job = run(make_job(alice, code, {"small": True}))
    assert_succeeded(job)
    assert job.result == {"payload": {"small": True}, "file": None}


def test_large_input_arrives_in_PAYLOAD_FILE_and_get_input_reads_it(alice, job_work_root, settings):
    blob = "0123456789abcdef" * 20_000  # 320 kB: well past the 64 kB an environment variable may carry
    assert len(blob) > settings.JOB_PAYLOAD_ENV_MAX_BYTES
    code = (
        "import hashlib, json, os, sdk\n"
        "def handler(event, context):\n"
        "    with open(os.environ['PAYLOAD_FILE']) as handle:\n"
        "        from_file = json.load(handle)\n"
        "    return {'file': os.environ['PAYLOAD_FILE'], 'inEnv': 'PAYLOAD' in os.environ,\n"
        "            'sha': hashlib.sha256(event['blob'].encode()).hexdigest(), 'same': from_file == sdk.get_input()}\n"
    )
    job = run(make_job(alice, code, {"blob": blob}))
    assert_succeeded(job)
    assert job.result == {"file": "/job/input/payload.json", "inEnv": False,
                          "sha": hashlib.sha256(blob.encode()).hexdigest(), "same": True}


def test_the_job_environment_carries_its_ids_model_and_output_dir(alice, job_work_root):
    code = (
        "import os\n"
        "def handler(event, context):\n"
        "    names = ['JOB_ID', 'FUNCTION_ID', 'LLM_MODEL', 'OUTPUT_DIR', 'AI_ENDPOINT', 'GREETING']\n"
        "    return {name: os.environ.get(name) for name in names}\n"
    )
    job = run(make_job(alice, code, model_id="llama3.2:1b", env={"GREETING": "hi", "JOB_ID": "spoofed",
                                                                  "LLM_MODEL": "spoofed"}))
    assert_succeeded(job)
    assert job.result["JOB_ID"] == str(job.pk)
    assert job.result["FUNCTION_ID"] == str(job.function_id)
    assert job.result["LLM_MODEL"] == "llama3.2:1b"
    assert job.result["OUTPUT_DIR"] == "/job/out"
    assert job.result["AI_ENDPOINT"].startswith("unix:///")
    assert job.result["GREETING"] == "hi"


def test_the_script_may_write_to_OUTPUT_DIR_and_tmp(alice, job_work_root):
    code = (
        "import os\n"
        "def handler(event, context):\n"
        "    for folder in (os.environ['OUTPUT_DIR'], '/tmp'):\n"
        "        with open(os.path.join(folder, 'note.txt'), 'w') as handle:\n"
        "            handle.write('ok')\n"
        "    return sorted(os.listdir(os.environ['OUTPUT_DIR']))\n"
    )
    job = run(make_job(alice, code))
    assert_succeeded(job)
    assert job.result == ["note.txt"]


def test_modules_next_to_main_py_can_be_imported(alice, job_work_root):
    from jobs import services

    archive = make_zip({"main.py": "import helper\ndef handler(event, context):\n    return helper.twice(event)\n",
                        "helper.py": "def twice(x):\n    return x * 2\n"})
    function = services.deploy_function(owner=alice.user, name="zipped", code=archive, filename="code.zip")
    job = Job.objects.create(owner=alice.user, function=function, function_version=function.current_version,
                             model_id="model-a", node="test-node", queue="jobs", input_data=21,
                             memory_mb=function.memory_mb, timeout_seconds=function.timeout_seconds)
    job = run(job)
    assert_succeeded(job)
    assert job.result == 42


def test_stdout_and_stderr_are_captured_apart(alice, job_work_root):
    code = (
        "import sys\n"
        "def handler(event, context):\n"
        "    print('to out')\n"
        "    print('to err', file=sys.stderr)\n"
        "    return None\n"
    )
    job = run(make_job(alice, code))
    assert_succeeded(job)
    assert job.stdout == "to out\n"
    assert job.stderr == "to err\n"
    assert not job.stdout_truncated and not job.stderr_truncated


def test_the_result_keeps_json_types(alice, job_work_root):
    value = {"int": 1, "float": 1.5, "bool": True, "none": None, "list": [1, "two"], "nested": {"k": "v"}}
    code = f"import json\ndef handler(event, context):\n    return json.loads({json.dumps(json.dumps(value))})\n"
    job = run(make_job(alice, code))
    assert_succeeded(job)
    assert job.result == value


def test_a_wrapped_handler_is_called_with_what_its_wrapped_function_takes(alice, job_work_root):
    code = (
        "import functools\n"
        "def logged(function):\n"
        "    @functools.wraps(function)\n"
        "    def wrapper(*args):\n"
        "        return {'args': len(args), 'value': function(*args)}\n"
        "    return wrapper\n"
        "@logged\n"
        "def handler(event):\n"
        "    return event * 2\n"
    )
    job = run(make_job(alice, code, 21))
    assert_succeeded(job)
    assert job.result == {"args": 1, "value": 42}


def test_a_handler_taking_any_number_of_arguments_gets_the_event_and_the_context(alice, job_work_root):
    job = run(make_job(alice, "def handler(*args):\n    return [args[0], sorted(args[1])]\n", "e"))
    assert_succeeded(job)
    assert job.result == ["e", ["aiEndpoint", "functionId", "jobId", "modelId", "outputDir"]]


def test_what_the_script_defines_is_found_by_its_module_name_while_its_handler_runs(alice, job_work_root):
    code = (
        "import dataclasses, pickle, sys\n"
        "@dataclasses.dataclass\n"
        "class Point:\n"
        "    x: int\n"
        "def handler(event, context):\n"
        "    again = pickle.loads(pickle.dumps(Point(event)))\n"
        "    import main\n"
        "    return {'x': again.x, 'module': __name__, 'same': main is sys.modules[__name__]}\n"
    )
    job = run(make_job(alice, code, 3))
    assert_succeeded(job)
    assert job.result == {"x": 3, "module": "main", "same": True}


def test_a_trivial_job_starts_without_the_heavy_modules(alice, job_work_root):
    # Every job pays for what its runtime imports: these are loaded only by the scripts that use them.
    heavy = ["asyncio", "ast", "email", "http.client", "inspect", "runpy", "traceback", "typing"]
    code = f"import sys\ndef handler(event, context):\n    return [m for m in {heavy!r} if m in sys.modules]\n"
    job = run(make_job(alice, code))
    assert_succeeded(job)
    assert job.result == []
