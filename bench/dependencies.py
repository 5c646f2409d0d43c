"""Functions with dependencies (numpy + pydantic): the layer's build, cold and cached, and a numpy job's synchronous
latency with the warm pool on, beside its standard-library twin and a bare `docker run` with the layer mounted.

    .venv/bin/python bench/dependencies.py [--sync 20] [--pool-size 2] [--port 8106]

It starts its own stacks the way bench/jobs.py does (runserver, one Celery worker, SQLite and the filesystem broker
in a throw-away folder) and prints:
- the build time of the numpy + pydantic layer from deploy to `ready` as the API shows it: cold (an empty pip cache:
  the wheels come from the index), again in a fresh database with the pip cache warm (the same build without the
  download), and a second deploy of the same set (content-addressed: no build at all);
- a synchronous numpy job through `POST /run` with the pool on (one owner's hot function is warmed from its second
  job on), its standard-library twin through the same route, and a bare `docker run` of the same image,
  hardened alike, with the layer mounted doing the same imports: p50/p90, taken alternately in the same run, with
  the ratios. Figures only; nothing is asserted.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = (REPO_ROOT / "examples" / "numpy_pydantic" / "requirements.txt").read_text()
NUMPY_JOB = ("import numpy as np\nimport pydantic\n\n"
             "def handler(event, context):\n    return float(np.arange(10).sum())\n")
STDLIB_TWIN = "def handler(event, context):\n    return float(sum(range(10)))\n"
BARE_SCRIPT = "import numpy as np, pydantic; float(np.arange(10).sum())"


def _bench_jobs():
    """bench/jobs.py's stack and client (loaded by path: `jobs` is also the app's name)."""
    spec = importlib.util.spec_from_file_location("bench_jobs", REPO_ROOT / "bench" / "jobs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _bench_jobs()


def deploy(api, code: str, requirements: str = "") -> tuple[str, float, dict]:
    """Deploy; returns the function's id, the seconds until its dependencies were ready, and those."""
    started = time.perf_counter()
    status, body = api.call("POST", "/api/v1/functions/", {"name": f"bench-{uuid.uuid4().hex[:6]}", "code": code,
                                                           "requirements": requirements})
    if status != 201:
        raise SystemExit(f"deploy answered {status}: {body}")
    while (body.get("dependencies") or {}).get("status") == "building":
        time.sleep(0.1)
        status, body = api.call("GET", f"/api/v1/functions/{body['functionId']}/")
    dependencies = body.get("dependencies") or {}
    if dependencies.get("status") not in (None, "ready"):
        raise SystemExit(f"the build failed: {dependencies.get('log', '')[-2000:]}")
    return body["functionId"], time.perf_counter() - started, dependencies


def start_stack(folder: Path, args: argparse.Namespace, *, pip_cache: Path, pool_size: int):
    stack = bench.Stack(folder, port=args.port, concurrency=1, pool_size=pool_size)
    stack.env.update({"DEPENDENCY_PIP_CACHE_DIR": str(pip_cache)})
    stack.start()
    api = bench.Api(args.port, bench.owner_key(stack))
    api.call("GET", "/models")  # fills the catalogue from the node
    return stack, api


def bare_run_with_layer(image: str, layer: Path) -> float:
    return bench.bare_docker_run(image, options=("-v", f"{layer}:/opt/layer:ro", "-e", "PYTHONPATH=/opt/layer"),
                                 script=BARE_SCRIPT)


def timed_run(api, function_id: str) -> tuple[float, bool]:
    started = time.perf_counter()
    status, body = api.run(function_id)
    return (time.perf_counter() - started) * 1000, status == 200 and body.get("status") == "succeeded"


def sync_figures(api, numpy_fn: str, twin_fn: str, image: str, layer: Path, count: int) -> dict[str, list[float]]:
    for _ in range(3):  # warm every path (the numpy profile's pool too)
        timed_run(api, numpy_fn)
        timed_run(api, twin_fn)
        bare_run_with_layer(image, layer)
    figures: dict[str, list[float]] = {"numpy": [], "twin": [], "bare": []}
    failures = 0
    for _ in range(count):
        for name, function_id in (("numpy", numpy_fn), ("twin", twin_fn)):
            elapsed, ok = timed_run(api, function_id)
            figures[name].append(elapsed)
            failures += not ok
            time.sleep(0.3)  # let the pool refill, as between requests of a real client
        figures["bare"].append(bare_run_with_layer(image, layer))
    if failures:
        print(f"  ({failures} runs did not succeed)")
    return figures


def line(label: str, values: list[float]) -> str:
    return (f"  {label:44s} p50 {statistics.median(values):6.0f} ms   "
            f"p90 {bench.percentile(values, 0.9):6.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sync", type=int, default=20, help="synchronous runs of each kind to time")
    parser.add_argument("--pool-size", type=int, default=2, help="WARM_POOL_SIZE of the latency stack")
    parser.add_argument("--port", type=int, default=int(os.environ.get("WEB_PORT", "8106")))
    args = parser.parse_args()
    image = bench.runtime_image()
    print(f"{os.cpu_count()} CPUs; image {image}; requirements: {', '.join(REQUIREMENTS.split()[-2:])}")
    work = Path(tempfile.mkdtemp(prefix="bd-", dir="/tmp"))
    pip_cache = work / "pip-cache"
    try:
        stack, api = start_stack(work / "cold", args, pip_cache=pip_cache, pool_size=0)
        try:
            _, cold, _ = deploy(api, NUMPY_JOB, REQUIREMENTS)
        finally:
            stack.stop()
        stack, api = start_stack(work / "warm", args, pip_cache=pip_cache, pool_size=args.pool_size)
        try:
            numpy_fn, warm_cache, built = deploy(api, NUMPY_JOB, REQUIREMENTS)
            _, again, _ = deploy(api, NUMPY_JOB, REQUIREMENTS)
            twin_fn, _, _ = deploy(api, STDLIB_TWIN)
            print(f"\nlayer build, deploy to ready (numpy + pydantic: {len(built['packages'])} packages, "
                  f"{built['sizeBytes'] / 1e6:.0f} MB installed)")
            print(f"  cold (empty pip cache: wheels from the index)   {cold:6.1f} s")
            print(f"  fresh database, pip cache warm (no download)     {warm_cache:6.1f} s")
            print(f"  the same set deployed again (shared layer)       {again:6.2f} s   "
                  f"ratio to cold {again / cold:.3f}x")
            layer = next((work / "warm" / "jobs" / "layers").glob("*-*"), None)
            if layer is None:  # extracted on the first run's host: make it so
                bench_run = timed_run(api, numpy_fn)
                print(f"  (first run, extracting the layer on this host: {bench_run[0]:.0f} ms)")
                layer = next((work / "warm" / "jobs" / "layers").glob("*-*"))
            figures = sync_figures(api, numpy_fn, twin_fn, image, layer, args.sync)
            numpy_p50, twin_p50, bare_p50 = (statistics.median(figures[k]) for k in ("numpy", "twin", "bare"))
            print(f"\nsync jobs via POST /run, warm pool on ({args.pool_size} per profile), {args.sync} runs each")
            print(line("numpy + pydantic job", figures["numpy"]))
            print(line("its standard-library twin", figures["twin"]))
            print(line("bare docker run, layer mounted, same imports", figures["bare"]))
            print(f"  ratio numpy job / stdlib twin {numpy_p50 / twin_p50:.2f}x   "
                  f"numpy job / bare docker run {numpy_p50 / bare_p50:.2f}x")
        finally:
            stack.stop()
    finally:
        if os.environ.get("BENCH_KEEP"):
            print(f"(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
