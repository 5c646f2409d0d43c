"""Deploys examples/hello_llm and runs it through the API, printing the result and its metered tokens.

Run by scripts/demo.sh once the stack is up. Talks to the API over HTTP as any client would; only the API key is
made directly, with the same service as `manage.py create_api_key`.

Exits 0 only when the job succeeded and was metered for more than 0 tokens (CI relies on it: .ci/fresh-path).
"""
import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def api_key() -> str:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "infra_ainode.settings")
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.db import DatabaseError

    from accounts.services import create_api_key

    try:
        user, _ = User.objects.get_or_create(username="demo")
        return create_api_key(user=user, name="demo")[1]
    except DatabaseError as exc:
        sys.exit(f"demo.py: making the demo's API key failed: {exc}; scripts/stack.sh start migrates the database "
                 "(with the same DATABASE_URL)")


def call(base: str, key: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        base + path, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body or b"{}")
        except ValueError:
            return exc.code, {"detail": body[:300].decode(errors="replace")}
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        sys.exit(f"demo.py: calling {method} {base}{path} failed: {reason}; is the stack up? (scripts/stack.sh status)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--api", default=f"http://127.0.0.1:{os.environ.get('WEB_PORT', '8000')}")
    parser.add_argument("--topic", default="the sea")
    args = parser.parse_args()
    key = api_key()
    code = (ROOT / "examples" / "hello_llm" / "main.py").read_text()
    status, function = call(args.api, key, "POST", "/api/v1/functions/",
                            {"name": f"hello-llm-{int(time.time())}", "code": code, "timeoutSeconds": 120})
    if status != 201:
        print(f"deploy failed ({status}): {function}", file=sys.stderr)
        return 1
    print(f"deployed function {function['functionId']} (v{function['version']})")
    status, models = call(args.api, key, "GET", "/models")
    if status == 200:
        print("models: " + ", ".join(f"{m['id']} ({m['status']})" for m in models.get("models", [])))
    started = time.monotonic()
    status, job = call(args.api, key, "POST", "/run",
                       {"functionId": function["functionId"], "inputData": {"topic": args.topic}})
    while status == 202:
        time.sleep(1)
        status, job = call(args.api, key, "GET", f"/status/{job['jobId']}")
        if job.get("status") in ("queued", "running"):
            status = 202
    print(f"job {job.get('jobId')} {job.get('status')} in {time.monotonic() - started:.1f} s "
          f"on worker {job.get('workerId')} with model {job.get('modelId')}")
    if job.get("status") != "succeeded":
        print(json.dumps(job, indent=2), file=sys.stderr)
        return 1
    print("result:", json.dumps(job["result"], indent=2))
    print(f"stdout: {job['stdout'].strip()}")
    print(f"tokens: {job['promptTokens']} prompt + {job['completionTokens']} completion = "
          f"{job['llm_token_count']} in {job['llmCalls']} model calls")
    if not job["llm_token_count"]:
        print("the job was metered for no tokens", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
