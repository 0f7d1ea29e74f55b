"""cxr-triage through four paths, in one run on one machine, with the same weights and client:

(a) Medserve, torch backend; (b) Medserve, ONNX Runtime backend (the same weights exported to
ONNX, as a vendor would ship them); (c) Medserve, triton backend (the gateway and an imaging
replica in front of Triton); (d) Triton called directly. Every path is driven by the same
tritonclient HTTP (binary OIP) load at each concurrency level, the four taking turns. Triton
runs the Python-backend build of `medserve build-triton` with as many model instances as the
manifest allows Medserve replicas (every Medserve path runs that many), and the same threads.

Used by `python benchmarks/imaging.py --compare-backends`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from serving.repository.checksums import sha256_file
from serving.repository.store import load_repository
from serving.testing.process import running_server
from serving.triton.build import build_repository, copy_with_backend
from serving.triton.onnx_export import export_onnx
from serving.triton.server import TritonServer

Row = dict[str, float]
Load = Callable[[str, int, float], Coroutine[object, object, Row]]
PATHS = ("medserve-torch", "medserve-onnx", "medserve-triton", "triton-direct")
console = Console()


def pinned_scaling(source: Path, model: str) -> dict[str, int]:
    """`model`'s scaling pinned at its manifest's maximum: an autoscaling step (a replica
    loading its model) inside a short measurement would be measured instead of the path."""
    replicas = load_repository(source).manifest(model).scaling.max_replicas
    return {"min_replicas": replicas, "max_replicas": replicas}


def triton_copy(source: Path, dest: Path, model: str, scaling: dict[str, int]) -> Path:
    """The repository with `model` on the triton backend, one Triton instance per replica."""
    return copy_with_backend(source, dest, [model], scaling=dict(scaling),
                             triton={"instance_count": scaling["max_replicas"]})


def start_triton(stack: contextlib.ExitStack, triton_repo: Path, tmp: Path) -> TritonServer:
    """Triton (the Python-backend build of `medserve build-triton`) over `triton_repo`,
    ready, stopped when `stack` closes."""
    build_repository(load_repository(triton_repo), tmp / "triton-models")
    log = stack.enter_context((tmp / "tritonserver.log").open("wb"))
    triton = stack.enter_context(TritonServer(tmp / "triton-models", log=log))
    triton.start()
    triton.wait_ready()
    return triton


def compare(root: Path, model: str, levels: list[int], seconds: float, load: Load) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-backends-"))
    source = root / "model_repo"
    pinned = pinned_scaling(source, model)
    replicas = pinned["max_replicas"]
    torch_repo = copy_with_backend(source, tmp / "torch", [model], backend="torch",
                                   scaling=dict(pinned))
    triton_repo = triton_copy(source, tmp / "triton", model, pinned)
    onnx_repo = onnx_copy(torch_repo, tmp / "onnx", model)
    results: dict[str, list[Row]] = {p: [] for p in PATHS}
    with contextlib.ExitStack() as stack:
        triton = start_triton(stack, triton_repo, tmp)
        urls = {"triton-direct": triton.http_url}
        for path, repo, extra in (("medserve-torch", torch_repo, []),
                                  ("medserve-onnx", onnx_repo, []),
                                  ("medserve-triton", triton_repo,
                                   ["--triton-url", triton.grpc_url])):
            srv = stack.enter_context(running_server(
                "--repo", str(repo), *extra, log=tmp / f"{path}.log", cwd=root
            ))
            urls[path] = srv.host_port
        # All three stay up and take turns at each level: this machine's load drifts, and
        # interleaving spreads the drift over the paths instead of onto one of them.
        for c in levels:
            for path in PATHS:
                results[path].append(asyncio.run(load(urls[path], c, seconds)))
    report(model, results, replicas)


def onnx_copy(source: Path, dest: Path, model: str) -> Path:
    """The same repository with `model`'s served version exported to ONNX (same weights,
    same manifest otherwise): what ONNX Runtime in the replica serves."""
    shutil.copytree(source, dest)
    repo = load_repository(dest)
    manifest = repo.manifest(model)
    version = manifest.version(manifest.served_version)
    out = repo.version_dir(model, version.version) / "model.onnx"
    export_onnx(manifest, version, repo.verify(model, version), out)
    path = dest / model / "manifest.yaml"
    doc = yaml.safe_load(path.read_text())
    for v in doc["versions"]:
        if str(v["version"]) == version.version:
            v["weights"] = {"file": out.name, "format": "onnx", "sha256": sha256_file(out)}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


def report(model: str, results: dict[str, list[Row]], instances: int) -> None:
    table = Table(title=f"{model}: Medserve (torch | onnx | triton backend) vs Triton direct, "
                  "HTTP OIP")
    for col in ("path", "concurrency", "img/s", "p50 ms", "p99 ms", "errors", "img/s vs direct",
                "p99 vs direct"):
        table.add_column(col, justify="right")
    direct = {r["concurrency"]: r for r in results["triton-direct"]}
    for path in PATHS:
        for r in results[path]:
            d = direct[r["concurrency"]]
            table.add_row(path, str(r["concurrency"]), f"{r['throughput']:.1f}",
                          f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", str(r["errors"]),
                          f"{r['throughput'] / d['throughput']:.2f}",
                          f"{r['p99_ms'] / d['p99_ms']:.2f}")
    console.print(table)
    best = {p: max(results[p], key=lambda r: r["throughput"]) for p in PATHS}
    peak = best["triton-direct"]
    for path in PATHS:
        b = best[path]
        same = direct[b["concurrency"]]  # p99 compared at the same offered load
        console.print(
            f"{path:16} peak {b['throughput']:.1f} img/s at concurrency {b['concurrency']}: "
            f"x{b['throughput'] / peak['throughput']:.2f} Triton direct's peak; p99 "
            f"{b['p99_ms']:.0f} ms, x{b['p99_ms'] / same['p99_ms']:.2f} Triton direct's there"
        )
    onnx, torch = best["medserve-onnx"], best["medserve-torch"]
    console.print(f"ONNX Runtime backend vs torch backend, peak img/s: "
                  f"x{onnx['throughput'] / torch['throughput']:.2f}")
    top = max(PATHS[:-1], key=lambda p: best[p]["throughput"])
    b = best[top]
    met = (b["throughput"] >= peak["throughput"]
           and b["p99_ms"] <= direct[b["concurrency"]]["p99_ms"])
    console.print(
        f"Medserve's best path: {top}. Target (peak >= Triton direct's peak, p99 there <= "
        f"Triton direct's at that concurrency): {'met' if met else 'NOT met'}. "
        f"Triton instances = Medserve replicas = {instances}."
    )
