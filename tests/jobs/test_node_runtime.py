"""The node runtime's container contract: index.js (or main.js) with a handler, async or not, or a plain script;
input as PAYLOAD or PAYLOAD_FILE; the result on the result channel; stdout, stderr and exit codes; the same limits.

Every test runs in the real runtime image, on a cold container and on a pooled (warm) one.
"""
import pytest

from jobs.models import Job
from jobs.runner import run_job
from tests.support.jobs import make_job

pytestmark = pytest.mark.usefixtures("served_models", "execution")


def run_node(account, code: str, input_data=None, **options) -> Job:
    job = make_job(account, code, input_data, runtime="node", **options)
    run_job(job.pk)
    return Job.objects.get(pk=job.pk)


def test_a_handler_gets_the_input_and_context_and_its_return_value_is_the_result(alice, job_work_root):
    code = (
        "exports.handler = (event, context) => {\n"
        "  console.log('to stdout');\n"
        "  console.error('to stderr');\n"
        "  return {doubled: event.n * 2, jobId: context.jobId, model: context.modelId,\n"
        "          nodePath: process.env.NODE_PATH, uid: process.getuid()};\n"
        "};\n"
    )
    job = run_node(alice, code, {"n": 21})
    assert (job.status, job.exit_code, job.error_code) == ("succeeded", 0, ""), job.stderr
    assert job.result == {"doubled": 42, "jobId": str(job.pk), "model": "smollm2:135m",
                          "nodePath": "/opt/ainode/node", "uid": 10001}
    assert job.stdout == "to stdout\n"
    assert job.stderr == "to stderr\n"
    assert job.peak_memory_bytes > 1_000_000
    assert job.function_version.runtime == "node"


def test_an_async_handler_is_awaited(alice, job_work_root):
    code = (
        "exports.handler = async (event) => {\n"
        "  await new Promise((resolve) => setTimeout(resolve, 50));\n"
        "  return event.words.map((word) => word.toUpperCase());\n"
        "};\n"
    )
    job = run_node(alice, code, {"words": ["a", "b"]})
    assert (job.status, job.result) == ("succeeded", ["A", "B"])


def test_a_plain_script_returns_its_result_through_the_sdk_once_its_work_is_done(alice, job_work_root):
    code = (
        "const sdk = require('sdk');\n"
        "const event = sdk.getInput();\n"
        "setTimeout(() => sdk.returnOutput({late: event.x}), 50);\n"
    )
    job = run_node(alice, code, {"x": "y"})
    assert (job.status, job.result) == ("succeeded", {"late": "y"})


def test_a_large_input_arrives_as_a_file(alice, job_work_root, settings):
    settings.JOB_PAYLOAD_ENV_MAX_BYTES = 1000
    code = "exports.handler = (event) => ({length: event.text.length, file: process.env.PAYLOAD_FILE});\n"
    job = run_node(alice, code, {"text": "z" * 5000})
    assert job.result == {"length": 5000, "file": "/job/input/payload.json"}


def test_a_thrown_error_fails_the_job_with_a_script_error_and_its_stack(alice, job_work_root):
    job = run_node(alice, "exports.handler = async () => { throw new TypeError('bad input'); };\n")
    assert (job.status, job.error_code, job.exit_code) == ("failed", "script_error", 1)
    assert "TypeError: bad input" in job.error_message
    assert "index.js" in job.stderr


def test_a_syntax_error_is_the_jobs_script_error(alice, job_work_root):
    job = run_node(alice, "exports.handler = (event => {\n")
    assert (job.status, job.error_code) == ("failed", "script_error")
    assert "SyntaxError" in job.error_message


def test_process_exit_with_a_code_fails_the_job_with_that_exit_code(alice, job_work_root):
    job = run_node(alice, "console.log('bye');\nprocess.exit(3);\n")
    assert (job.status, job.exit_code) == ("failed", 3)
    assert job.stdout == "bye\n"


def test_a_result_that_is_not_json_fails_the_job(alice, job_work_root):
    job = run_node(alice, "exports.handler = () => ({big: 10n});\n")
    assert (job.status, job.exit_code) == ("failed", 1)
    assert "ResultNotJSON" in job.error_message


def test_a_handler_that_never_settles_fails_the_job(alice, job_work_root):
    job = run_node(alice, "exports.handler = () => new Promise(() => {});\n")
    assert (job.status, job.error_code) == ("failed", "script_error")
    assert "never settled" in job.error_message


def test_a_script_that_runs_too_long_times_out(alice, job_work_root):
    job = run_node(alice, "setInterval(() => {}, 1000);\n", timeout_seconds=2)
    assert job.status == "timed_out"


def test_main_js_is_an_entry_file_too(alice, job_work_root):
    from jobs import services
    from tests.support.jobs import make_zip

    function = services.deploy_function(owner=alice.user, name="main-js",
                                        code=make_zip({"main.js": "module.exports = () => require('./lib').x;\n",
                                                       "lib.js": "exports.x = 'from lib';\n"}),
                                        filename="code.zip")
    assert function.runtime == "node"
    job = services.create_job(owner=alice.user, function=function, function_version=function.current_version,
                              model_id="smollm2:135m", node="test-node", queue="jobs", input_data=None,
                              memory_mb=function.memory_mb, timeout_seconds=function.timeout_seconds)
    run_job(job.pk)
    job.refresh_from_db()
    assert (job.status, job.result) == ("succeeded", "from lib")
