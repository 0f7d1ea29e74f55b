"""Imaging benchmark for cxr-triage: raw batched model vs the full HTTP path, in one run.

(a) raw: the model's own backend in this process, batches of the manifest's max size, with the
    replica's thread count; (b) served: tritonclient's asyncio client sending binary OIP infer
    requests through the Serve proxy, gateway and imaging replica at rising concurrency.
The raw figures are measured before and after the served ones and averaged, because this
machine is noisy; ratios are what to compare, not absolute numbers.

    python benchmarks/imaging.py [--seconds 8] [--url HOST:PORT]
    python benchmarks/imaging.py --compare-backends   # torch vs triton backend vs Triton direct
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

# As in a Serve replica (Ray sets OMP_NUM_THREADS to the actor's CPUs), before torch loads
# OpenMP: only the backend's inference thread sets its own thread count.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import tritonclient.http.aio as aioclient
from rich.console import Console
from rich.table import Table

from loadtests.report.stats import percentile
from serving.backends.torch_backend import TorchBackend
from serving.repository.store import load_repository
from serving.testing.process import running_server

ROOT = Path(__file__).resolve().parent.parent
MODEL = "cxr-triage"
console = Console()


def raw(seconds: float, threads: int | None = None) -> dict[str, float]:
    """`threads`: torch's thread count (default: the replica's, from the manifest)."""
    repo = load_repository(ROOT / "model_repo")
    m = repo.manifest(MODEL)
    v = m.version(m.served_version)
    threads = threads or m.resources.threads or max(1, math.ceil(m.resources.cpus))
    backend = TorchBackend(m, v, repo.verify(MODEL, v), "cpu", threads)
    batch = m.batching.max_batch_size
    x1 = np.random.default_rng(0).standard_normal((1, 1, 224, 224)).astype(np.float32)
    xb = np.repeat(x1, batch, axis=0)

    def run(x: np.ndarray) -> None:  # the replica's own path: the backend's inference thread
        asyncio.run(backend.run([x]))

    run(xb)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(xb)
        done += batch
    throughput = done / (time.perf_counter() - start)
    lat = []
    for _ in range(30):
        t = time.perf_counter()
        run(x1)
        lat.append(time.perf_counter() - t)
    backend.executor.shutdown()
    return {"throughput": throughput, "p50_ms": statistics.median(lat) * 1e3, "batch": batch,
            "threads": threads}


async def served(url: str, concurrency: int, seconds: float) -> dict[str, float]:
    client = aioclient.InferenceServerClient(url, conn_limit=concurrency + 4)
    x = np.random.default_rng(1).standard_normal((1, 1, 224, 224)).astype(np.float32)
    latencies: list[float] = []
    errors = 0
    stop_at = math.inf  # set after the warm-up

    async def worker() -> None:
        nonlocal errors
        inp = _input(x)
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            try:
                await client.infer(MODEL, [inp])
                latencies.append(time.perf_counter() - t)
            except Exception:
                errors += 1

    for _ in range(2):  # warm-up: routing tables, connections, first batches
        await client.infer(MODEL, [_input(x)])
    start = time.perf_counter()
    stop_at = start + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    await client.close()
    return {
        "concurrency": concurrency,
        "throughput": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "errors": errors,
    }


def _input(x: np.ndarray) -> aioclient.InferInput:
    inp = aioclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def report(raws: list[dict[str, float]], rows: list[dict[str, float]]) -> None:
    raw_tp = statistics.mean(r["throughput"] for r in raws)
    raw_p50 = statistics.mean(r["p50_ms"] for r in raws)
    table = Table(title=f"{MODEL}: served over HTTP (binary OIP) vs raw model in-process")
    for col in ("concurrency", "img/s", "p50 ms", "p99 ms", "errors", "served/raw"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["concurrency"]), f"{r['throughput']:.1f}", f"{r['p50_ms']:.1f}",
                      f"{r['p99_ms']:.1f}", str(r["errors"]), f"{r['throughput'] / raw_tp:.3f}")
    console.print(table)
    best = max(rows, key=lambda r: r["throughput"])
    c1 = next(r for r in rows if r["concurrency"] == 1)
    runs = ", ".join(f"{r['throughput']:.1f}" for r in raws)
    console.print(
        f"raw: {raw_tp:.1f} img/s at batch {raws[0]['batch']:.0f} (runs: {runs}), "
        f"batch-1 p50 {raw_p50:.1f} ms"
    )
    console.print(
        f"served/raw at saturation: {best['throughput'] / raw_tp:.3f} "
        f"(concurrency {best['concurrency']}; target >= 0.9)"
    )
    console.print(
        f"per-request overhead at concurrency 1: p50 {c1['p50_ms'] - raw_p50:.1f} ms "
        f"(served {c1['p50_ms']:.1f} ms - raw {raw_p50:.1f} ms; target <= 5 ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="Duration of each level.")
    parser.add_argument("--url", help="HOST:PORT of a running Medserve (default: start one).")
    parser.add_argument("--concurrency", default="1,2,4,8,16,32")
    parser.add_argument(
        "--compare-backends", action="store_true",
        help="Instead: Medserve torch vs triton backend vs Triton direct (benchmarks/backends.py).",
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.compare_backends:
        from backends import compare  # this script's folder is on sys.path

        compare(ROOT, MODEL, levels, args.seconds, served)
        return

    def measure(url: str) -> None:
        raws = [raw(args.seconds)]
        rows = [asyncio.run(served(url, c, args.seconds)) for c in levels]
        raws.append(raw(args.seconds))
        report(raws, rows)

    if args.url:
        measure(args.url)
        return
    log = Path(tempfile.mkdtemp()) / "server.log"
    with running_server("--repo", str(ROOT / "model_repo"), log=log, cwd=ROOT) as srv:
        measure(srv.host_port)


if __name__ == "__main__":
    main()
