"""`ainode`: deploy functions, run them, follow jobs and read usage from a terminal or a script.

The key and the API's URL come from --key / --url or from AINODE_API_KEY / AINODE_URL. Output is a readable
table or summary; --json prints the API's own JSON for scripts. The exit code says what happened (see EXIT_*).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from . import events_out, output, receipts
from .client import ApiError, Client, Unreachable
from .events import EventStreamError, follow_job
from .events import Progress as JobProgress
from .upload import UsageError, code_of, requirements_of, runtime_of

DEFAULT_URL = "http://127.0.0.1:8000"
POLL_SECONDS = 0.5
TERMINAL = ("succeeded", "failed", "timed_out", "cancelled")

EXIT_OK = 0
EXIT_JOB_FAILED = 1      # the job ran and failed, timed out or was cancelled
EXIT_USAGE = 2           # the command line was wrong (argparse's own code too)
EXIT_REFUSED = 3         # the API refused the request: invalid input, a conflict, a reused idempotency key
EXIT_NOT_FOUND = 4       # no such function or job (for this key)
EXIT_AUTH = 5            # no key, or a key the API does not accept
EXIT_QUOTA = 6           # over a quota or a rate limit (402, 429)
EXIT_UNAVAILABLE = 7     # the API could not be reached or failed (5xx)
EXIT_PENDING = 8         # the job has not finished yet (queued or running)



# --- commands ---------------------------------------------------------------------------------------------------

def cmd_deploy(client: Client, args: argparse.Namespace) -> int:
    """Deploy DIR or FILE as a new function, or as a new version of the function of that name."""
    path = Path(args.path)
    code = code_of(path)
    runtime = args.runtime or runtime_of(path)
    name = args.name or (path.resolve().name if path.is_dir() else path.stem)
    settings = {key: value for key, value in (("memoryMb", args.memory), ("timeoutSeconds", args.timeout),
                                              ("tokenBudget", args.budget)) if value is not None}
    # A folder's requirements.txt is its dependencies: sent even when absent (empty), so that removing the file
    # removes them from the new version. A file or zip given alone keeps what the server makes of it.
    code_fields = {"codeBase64": base64.b64encode(code).decode(), **requirements_of(path, runtime),
                   **({"runtime": runtime} if runtime else {})}
    body = {"name": name, **code_fields, **settings}
    try:
        answer = client.post("/api/v1/functions/", body, headers={"Idempotency-Key": str(uuid.uuid4())})
        function, verb = answer.body, "deployed"
    except ApiError as error:
        if error.code != "function_exists":
            raise
        existing = _function_named(client, name)
        function = client.patch(f"/api/v1/functions/{existing['functionId']}/", {**code_fields, **settings}).body
        verb = "updated"
    if not args.no_wait:
        function = _wait_for_dependencies(client, function, quiet=args.json)
    dependencies = function.get("dependencies") or {}
    if args.json:
        output.as_json(function)
    else:
        print(f"{verb} function {function['name']} v{function['version']} ({function['functionId']})")
        output.fields([("memory", f"{function['memoryMb']} MB"), ("timeout", f"{function['timeoutSeconds']} s"),
                       ("token budget", function.get("tokenBudget")), ("files", ", ".join(function["files"])),
                       ("dependencies", _dependencies_line(dependencies) if dependencies else None)])
    if dependencies.get("status") == "failed":
        if not args.json:
            print(f"ainode: the dependencies failed to build ({dependencies['errorCode']}); the build's log:\n"
                  f"{dependencies['log']}", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK


def cmd_run(client: Client, args: argparse.Namespace) -> int:
    """Submit a job of FUNCTION (an id or a name); wait for its result unless --async (--follow: print its output
    as it comes, with a status line of elapsed time, calls and tokens)."""
    function_id = _function_id(client, args.function)
    body: dict[str, Any] = {"functionId": function_id, "inputData": _input(args.input)}
    if args.model:
        body["modelId"] = args.model
    if args.budget is not None:
        body["tokenBudget"] = args.budget
    # A fresh key per invocation: a request retried after a lost connection cannot start a second job.
    headers = {"x-async": "true", "Idempotency-Key": args.idempotency_key or str(uuid.uuid4())}
    accepted = client.post("/run", body, headers=headers).body
    job_id = accepted["jobId"]
    if args.asynchronous:
        if args.json:
            output.as_json(accepted)
        else:
            print(f"job {job_id} {accepted['jobStatus']}; follow it with: ainode status {job_id}")
        return EXIT_OK
    if args.follow:
        return _show_job(_follow(client, job_id, quiet=args.json).finished, args, output_shown=True)
    return _show_job(_wait(client, job_id, args.wait), args)


def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    """What JOB printed so far; with --follow, its output as it comes until it ends, then its status line."""
    if args.follow:
        progress = _follow(client, args.job, quiet=False)
        job = progress.finished
        print(progress.line(), file=sys.stderr)
    else:
        job = client.get(f"/status/{args.job}").body
        _print_output(job)
    return _exit_code(job)


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    return _show_job(client.get(f"/status/{args.job}").body, args)


def cmd_jobs(client: Client, args: argparse.Namespace) -> int:
    function = _function_id(client, args.function) if args.function else None
    jobs = client.pages("/api/v1/jobs/", limit=args.limit, status=args.status, function=function, model=args.model)
    if args.json:
        output.as_json(jobs)
        return EXIT_OK
    rows = [{**job, "tokens": job["llm_token_count"], "cost": money(job["cost"]),
             "duration": _seconds(job["durationMs"]), "created": job["createdAt"][:19].replace("T", " ")}
            for job in jobs]
    output.table(rows, [("jobId", "JOB"), ("status", "STATUS"), ("modelId", "MODEL"), ("tokens", "TOKENS"),
                        ("cost", "COST"), ("duration", "DURATION"), ("created", "CREATED")])
    return EXIT_OK


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.post(f"/api/v1/jobs/{args.job}/cancel/").body
    if args.json:
        output.as_json(job)
    else:
        print(f"job {job['jobId']} {job['status']}")
    return EXIT_OK


def cmd_models(client: Client, args: argparse.Namespace) -> int:
    body = client.get("/models").body
    if args.json:
        output.as_json(body)
        return EXIT_OK
    rows = [{**model, "parameters": model["details"]["parameter_size"],
             "quantization": model["details"]["quantization"]} for model in body["models"]]
    output.table(rows, [("id", "MODEL"), ("status", "STATUS"), ("node", "NODE"), ("parameters", "PARAMETERS"),
                        ("quantization", "QUANTIZATION"), ("size", "SIZE")])
    if body.get("warning"):
        print(f"warning: {body['warning']}", file=sys.stderr)
    return EXIT_OK


def cmd_usage(client: Client, args: argparse.Namespace) -> int:
    query = {"from": args.start, "to": args.end, "group_by": args.by}
    first = client.get("/api/v1/usage/", page_size=500, **query).body
    rows, page, body = list(first["results"]), 1, first
    while body.get("next"):
        page += 1
        body = client.get("/api/v1/usage/", page=page, page_size=500, **query).body
        rows += body["results"]
    if args.json:
        output.as_json({**first, "results": rows, "next": None, "previous": None})
        return EXIT_OK
    key = {"day": [("day", "DAY")], "model": [("modelId", "MODEL")],
           "function": [("functionName", "FUNCTION")]}[first["groupBy"]]
    rows = [{**row, "cost": money(row["cost"])} for row in rows]
    output.table(rows, [*key, ("jobs", "JOBS"), ("calls", "CALLS"), ("promptTokens", "PROMPT"),
                        ("completionTokens", "COMPLETION"), ("totalTokens", "TOKENS"), ("cost", "COST")])
    totals = first["totals"]
    print(f"\n{first['from']} .. {first['to']}: {totals['jobs']} jobs, {totals['calls']} calls, "
          f"{totals['totalTokens']} tokens, cost {money(totals['cost'])} {first['currency']}")
    if first.get("quota"):
        _show_quota(first["quota"], first["currency"])
    return EXIT_OK


# --- helpers ----------------------------------------------------------------------------------------------------

def _wait_for_dependencies(client: Client, function: dict[str, Any], *, quiet: bool) -> dict[str, Any]:
    """`function` once its dependencies are no longer building, with a progress line (on a terminal)."""
    if (function.get("dependencies") or {}).get("status") != "building":
        return function
    if not quiet:
        print(f"building the dependencies of {function['name']}...", file=sys.stderr)
    progress = output.Progress()
    while (function.get("dependencies") or {}).get("status") == "building":
        progress.show("building dependencies")
        time.sleep(POLL_SECONDS)
        function = client.get(f"/api/v1/functions/{function['functionId']}/").body
    progress.done()
    return function


def _dependencies_line(dependencies: dict[str, Any]) -> str:
    packages = dependencies.get("packages") or {}
    size = dependencies.get("sizeBytes")
    details = [f"{len(packages)} packages"] if packages else []
    if size:
        details.append(f"{size / 1e6:.1f} MB")
    if dependencies.get("buildSeconds") is not None:
        details.append(f"built in {dependencies['buildSeconds']:.1f} s")
    return f"{dependencies['status']}" + (f" ({', '.join(details)})" if details else "")


def _input(raw: str | None) -> Any:
    """--input: JSON text, @FILE (JSON in a file) or @- (JSON on standard input)."""
    if raw is None:
        return None
    text = raw
    if raw.startswith("@"):
        source = raw[1:]
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text()
        except OSError as error:
            raise UsageError(f"--input: cannot read {source}: {error.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as error:
        raise UsageError(f"--input is not JSON: {error}") from None


def _function_id(client: Client, ref: str) -> str:
    try:
        return str(uuid.UUID(ref))
    except ValueError:
        return _function_named(client, ref)["functionId"]


def _function_named(client: Client, name: str) -> dict[str, Any]:
    for function in client.pages("/api/v1/functions/"):
        if function["name"] == name:
            return function
    raise ApiError(404, {"detail": f"You have no function named {name!r}.", "code": "function_not_found"})


def _wait(client: Client, job_id: str, limit: float | None) -> dict[str, Any]:
    """The job once it has ended, or as it is when `limit` seconds have passed (or on Ctrl-C)."""
    progress = output.Progress()
    deadline = time.monotonic() + limit if limit else None
    try:
        while True:
            job = client.get(f"/status/{job_id}").body
            if job["status"] in TERMINAL or (deadline is not None and time.monotonic() >= deadline):
                return job
            progress.show(f"job {job_id[:8]} {job['status']}")
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        return client.get(f"/status/{job_id}").body
    finally:
        progress.done()


def _follow(client: Client, job_id: str, *, quiet: bool) -> JobProgress:
    """Print the job's output as its events come (to stderr when `quiet`: stdout is for --json), drawing the status
    line on a terminal. Its `finished` is the job's result once it ends (or the job as it is on Ctrl-C)."""
    line, progress = output.Progress(), JobProgress()
    try:
        for event in follow_job(client.url, job_id, api_key=client.key, timeout=max(client.timeout, 30.0)):
            progress.update(event)
            if event.event in ("stdout", "stderr"):
                line.done()
                stream = sys.stderr if quiet or event.event == "stderr" else sys.stdout
                stream.write(event.data["text"] + ("[output truncated]\n" if event.data.get("truncated") else ""))
                stream.flush()
            line.show(progress.line())
    except EventStreamError as error:
        if error.status is not None:
            raise ApiError(error.status, error.body if isinstance(error.body, dict) else {"detail": str(error)})
        raise Unreachable(str(error)) from None
    except KeyboardInterrupt:
        progress.finished = client.get(f"/status/{job_id}").body
    finally:
        line.done()
    return progress


def _exit_code(job: dict[str, Any]) -> int:
    return EXIT_OK if job["status"] == "succeeded" else EXIT_JOB_FAILED if job["status"] in TERMINAL else EXIT_PENDING


def _print_output(job: dict[str, Any]) -> None:
    for stream in ("stdout", "stderr"):
        if job.get(stream):
            print(f"{stream}:\n" + "".join(f"  {line}\n" for line in job[stream].splitlines()), end="")


def _show_job(job: dict[str, Any], args: argparse.Namespace, *, output_shown: bool = False) -> int:
    code = _exit_code(job)
    if args.json:
        output.as_json(job)
        return code
    if code == EXIT_PENDING:
        print(f"job {job['jobId']} is {job['status']}; ask again with: ainode status {job['jobId']}")
        return code
    took = f" in {_seconds(job['durationMs'])}" if job.get("durationMs") is not None else ""
    print(f"job {job['jobId']} {job['status']}{took} (model {job['modelId']}, worker {job['workerId'] or '-'})")
    output.fields([
        ("tokens", f"{job['promptTokens']} prompt + {job['completionTokens']} completion = "
                   f"{job['llm_token_count']} in {_plural(job['llmCalls'], 'model call')}"),
        ("cost", f"{money(job['cost'])} {job['currency']}"),
        ("error", f"{job['errorCode']}: {job['errorMessage']}" if job["errorCode"] else None),
    ])
    if job.get("result") is not None:
        print("result:")
        output.as_json(job["result"])
    if not output_shown:
        _print_output(job)
    return code


def _show_quota(quota: dict[str, Any], currency: str) -> None:
    print(f"quota in {quota['month']}:")
    for name, label, shown in (("cost", currency, money), ("tokens", "tokens", str),
                               ("concurrentJobs", "jobs at once", str)):
        entry = quota.get(name)
        if entry:
            held = f", {shown(entry['held'])} held by jobs queued or running" if Decimal(entry["held"]) else ""
            print(f"  {label}: {shown(entry['used'])} used of {shown(entry['limit'])}{held}; "
                  f"{shown(entry['remaining'])} left")
    if quota.get("requestsPerMinute"):
        print(f"  requests: {quota['requestsPerMinute']} a minute")


def money(value: str | None) -> str | None:
    """A cost as the API writes it (ten decimals) as a person reads it: at least two decimals, no trailing zeros."""
    try:
        amount = Decimal(value)
    except (InvalidOperation, TypeError):
        return value
    text = format(amount.normalize(), "f")
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _seconds(milliseconds: int | None) -> str | None:
    return None if milliseconds is None else f"{milliseconds / 1000:.1f} s"


# --- the command line -------------------------------------------------------------------------------------------

def _common_options() -> argparse.ArgumentParser:
    # Accepted before or after the command (`ainode --json jobs` and `ainode jobs --json`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help=f"the API (env AINODE_URL; {DEFAULT_URL})")
    common.add_argument("--key", default=argparse.SUPPRESS, help="your API key (env AINODE_API_KEY)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the API's JSON")
    common.add_argument("--http-timeout", type=float, default=argparse.SUPPRESS, metavar="SECONDS",
                        help="seconds one HTTP request may take (30)")
    return common


def parser() -> argparse.ArgumentParser:
    common = _common_options()
    main = argparse.ArgumentParser(prog="ainode", parents=[common], description=__doc__.split("\n\n")[0],
                                   epilog="exit codes: 0 ok, 1 job failed, 2 usage, 3 refused, 4 not found, "
                                          "5 bad key, 6 quota or rate limit, 7 API unavailable, 8 job not finished, "
                                          "9 receipts do not verify")
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[Client, argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    deploy = command("deploy", cmd_deploy, "deploy a folder (with main.py, or index.js for node), a file or a zip")
    deploy.add_argument("path", metavar="DIR|FILE")
    deploy.add_argument("--name", help="the function's name (default: the folder's or file's name)")
    deploy.add_argument("--runtime", choices=("python", "node"),
                        help="python (main.py) or node (index.js); default: what the folder or file holds")
    deploy.add_argument("--memory", type=int, metavar="MB")
    deploy.add_argument("--timeout", type=int, metavar="SECONDS")
    deploy.add_argument("--budget", type=int, metavar="TOKENS", help="most tokens one job may spend")
    deploy.add_argument("--no-wait", action="store_true",
                        help="do not wait for the dependencies (requirements.txt, package.json) to be built")

    run = command("run", cmd_run, "run a function and wait for its result")
    run.add_argument("function", metavar="FUNCTION", help="a function's id or name")
    run.add_argument("--input", metavar="JSON|@FILE", help="the job's input: JSON, @file.json, or @- for stdin")
    run.add_argument("--model", help="the modelId (default: the function's default)")
    run.add_argument("--budget", type=int, metavar="TOKENS", help="most tokens this job may spend")
    run.add_argument("--async", dest="asynchronous", action="store_true", help="answer the job's id at once")
    run.add_argument("--wait", type=float, metavar="SECONDS", help="stop waiting after this long (exit code 8)")
    run.add_argument("--idempotency-key", metavar="KEY", help="your own key, to retry a run safely (default: new)")
    run.add_argument("--follow", action="store_true",
                     help="print the job's output as it comes, with a status line (elapsed, calls, tokens)")

    command("status", cmd_status, "a job's state or result").add_argument("job", metavar="JOB")
    logs = command("logs", cmd_logs, "what a job printed; --follow: as it comes, until it ends")
    logs.add_argument("job", metavar="JOB")
    logs.add_argument("--follow", "-f", action="store_true")
    jobs = command("jobs", cmd_jobs, "your jobs, newest first")
    jobs.add_argument("--status", choices=("queued", "running", *TERMINAL))
    jobs.add_argument("--function", metavar="FUNCTION", help="a function's id or name")
    jobs.add_argument("--model")
    jobs.add_argument("--limit", type=int, default=20, help="most jobs shown (20)")
    command("cancel", cmd_cancel, "cancel a queued or running job").add_argument("job", metavar="JOB")
    command("models", cmd_models, "the models the AI nodes serve")
    usage = command("usage", cmd_usage, "your usage (and your quota)")
    usage.add_argument("--from", dest="start", metavar="YYYY-MM-DD")
    usage.add_argument("--to", dest="end", metavar="YYYY-MM-DD")
    usage.add_argument("--by", choices=("day", "model", "function"), default="day")
    receipts.add_commands(command)
    events_out.add_commands(command, _function_id)
    return main


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    url = getattr(args, "url", None) or os.environ.get("AINODE_URL") or DEFAULT_URL
    key = getattr(args, "key", None) or os.environ.get("AINODE_API_KEY")
    if not key:
        print("ainode: no API key: give --key or set AINODE_API_KEY", file=sys.stderr)
        return EXIT_AUTH
    client = Client(url, key, timeout=getattr(args, "http_timeout", 30.0))
    try:
        return args.handler(client, args)
    except UsageError as error:
        print(f"ainode: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Unreachable as error:
        print(f"ainode: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ApiError as error:
        return _report(error, args)


def _report(error: ApiError, args: argparse.Namespace) -> int:
    if args.json:
        output.as_json(error.body, out=sys.stderr)
    else:
        print(f"ainode: {error.detail} ({error.code}, HTTP {error.status})", file=sys.stderr)
        if error.body.get("errors"):
            for field, messages in error.body["errors"].items():
                print(f"  {field}: {' '.join(map(str, messages)) if isinstance(messages, list) else messages}",
                      file=sys.stderr)
        if "Retry-After" in error.headers:
            print(f"  retry after {error.headers['Retry-After']} s", file=sys.stderr)
    if error.status == 404:
        return EXIT_NOT_FOUND
    if error.status in (401, 403):
        return EXIT_AUTH
    if error.status in (402, 429):
        return EXIT_QUOTA
    if error.status >= 500:
        return EXIT_UNAVAILABLE
    return EXIT_REFUSED
