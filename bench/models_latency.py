"""How fast is GET /models, live and with one node hung, and how fast does the node generate through our client?

    .venv/bin/python bench/models_latency.py [--runs 30] [--hung-runs 5] [--timeout-ms 2000] [--gen-runs 5]

Needs the local AI node (scripts/ai-node.sh start): its OpenAI API at AI_NODE_URL (http://127.0.0.1:8090) and
its Ollama front at AI_NODE_OLLAMA_URL (http://127.0.0.1:11435). Sets Django up on a throw-away SQLite database
and goes through the whole stack (API key, view, service, node clients, catalogue writes). Prints figures only:
it passes or fails nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2:135m"
PROMPT = "Once upon a time, in a small village by the sea, there lived"


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))]


def summary(values_ms: list[float]) -> str:
    return (f"median {statistics.median(values_ms):7.1f} ms   p95 {percentile(values_ms, 0.95):7.1f} ms   "
            f"min {min(values_ms):7.1f}   max {max(values_ms):7.1f}   (n={len(values_ms)})")


class HungNode:
    """Accepts connections on 127.0.0.1 and never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for conn in self.held:
            conn.close()


def setup_django(workdir: Path) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "infra_ainode.settings"
    os.environ["DATABASE_URL"] = f"sqlite:///{workdir / 'bench.sqlite3'}"
    os.environ["VAR_DIR"] = str(workdir)
    os.environ.setdefault("LOG_LEVEL", "ERROR")
    sys.path.insert(0, str(ROOT))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def api_client():
    from django.contrib.auth.models import User
    from rest_framework.test import APIClient

    from accounts.services import create_api_key

    user = User.objects.create_user(username=f"bench-{time.time_ns()}")
    _, key = create_api_key(user=user, name="bench")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def time_models(client, nodes: list[dict], runs: int, timeout_ms: int) -> tuple[list[float], dict]:
    from django.test import override_settings

    durations, last = [], {}
    with override_settings(AI_NODES=json.dumps(nodes), AI_NODE_TIMEOUT=timeout_ms):
        client.get("/models")  # warm-up: creates the rows, opens the database
        for _ in range(runs):
            started = time.perf_counter()
            response = client.get("/models")
            durations.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.content
            last = response.json()
    return durations, last


def generation(kind: str, url: str, runs: int, max_tokens: int) -> None:
    from nodeclient import client_for

    client = client_for(kind, url, timeout=120)
    client.generate(MODEL, PROMPT, max_tokens=8, temperature=0, seed=1)  # warm-up
    walls, tokens, node_rates = [], [], []
    for run in range(runs):
        started = time.perf_counter()
        completion = client.generate(MODEL, PROMPT, max_tokens=max_tokens, temperature=0.7, seed=run)
        walls.append(time.perf_counter() - started)
        tokens.append(completion.usage.completion_tokens or 0)
        rate = node_reported_rate(completion.raw)
        if rate:
            node_rates.append(rate)
    rates = [t / w for t, w in zip(tokens, walls) if w > 0]
    print(f"  {kind:7s} {url:28s} tokens/s through our client: median {statistics.median(rates):6.1f}  "
          f"min {min(rates):6.1f}  max {max(rates):6.1f}   completion tokens per run: median "
          f"{statistics.median(tokens):.0f}   wall per run: median {statistics.median(walls) * 1000:.0f} ms"
          + (f"   (node's own generation rate: median {statistics.median(node_rates):.1f} tokens/s)"
             if node_rates else ""))


def node_reported_rate(raw: dict) -> float | None:
    """Generation speed as the node measured it: llama.cpp's `timings`, or Ollama's eval_count/eval_duration."""
    timings = raw.get("timings") or {}
    if timings.get("predicted_per_second"):
        return float(timings["predicted_per_second"])
    if raw.get("eval_count") and raw.get("eval_duration"):
        return raw["eval_count"] / (raw["eval_duration"] / 1e9)
    return None


def scenario(title: str, run: Callable[[], tuple[list[float], dict]], extra: Callable[[list[float]], str] = None):
    durations, body = run()
    statuses = sorted({f"{m['node']}:{m['status']}" for m in body.get("models", [])})
    print(f"  {title:46s} {summary(durations)}")
    print(f"  {'':46s} models {statuses}{'  warning: yes' if body.get('warning') else ''}"
          + (f"  {extra(durations)}" if extra else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--openai-url", default=os.environ.get("AI_NODE_URL", "http://127.0.0.1:8090"))
    parser.add_argument("--ollama-url", default=os.environ.get("AI_NODE_OLLAMA_URL", "http://127.0.0.1:11435"))
    parser.add_argument("--runs", type=int, default=30, help="GET /models per live scenario")
    parser.add_argument("--hung-runs", type=int, default=5, help="GET /models with a hung node")
    parser.add_argument("--timeout-ms", type=int, default=2000, help="AI_NODE_TIMEOUT for every scenario")
    parser.add_argument("--gen-runs", type=int, default=5, help="generations per node kind")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-models-"))
    setup_django(workdir)
    from nodeclient import NodeError, client_for

    for kind, url in (("openai", args.openai_url), ("ollama", args.ollama_url)):
        try:
            client_for(kind, url, timeout=3).list_models()
        except NodeError as exc:
            print(f"the AI node does not answer at {url} ({exc}); start it with scripts/ai-node.sh start")
            return 1

    client = api_client()
    openai = {"name": "node-openai", "kind": "openai", "url": args.openai_url}
    ollama = {"name": "node-ollama", "kind": "ollama", "url": args.ollama_url}
    hung = HungNode()
    timeout = args.timeout_ms
    print(f"GET /models through the whole stack (throw-away SQLite); AI_NODE_TIMEOUT = {timeout} ms")
    try:
        scenario("live, one node (OpenAI API)", lambda: time_models(client, [openai], args.runs, timeout))
        scenario("live, one node (Ollama front)", lambda: time_models(client, [ollama], args.runs, timeout))
        scenario("live, both forms at once", lambda: time_models(client, [openai, ollama], args.runs, timeout))
        for kind in ("openai", "ollama"):
            scenario(f"OpenAI node + one hung {kind} node",
                     lambda: time_models(client, [openai, {"name": "hung", "kind": kind, "url": hung.url}],
                                         args.hung_runs, timeout),
                     lambda d: f"median overshoot past the timeout: {statistics.median(d) - timeout:+.1f} ms")
    finally:
        hung.close()

    shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nGeneration through nodeclient (prompt of {len(PROMPT.split())} words, "
          f"max_tokens={args.max_tokens}, {args.gen_runs} runs after a warm-up)")
    generation("openai", args.openai_url, args.gen_runs, args.max_tokens)
    generation("ollama", args.ollama_url, args.gen_runs, args.max_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
