"""cxr-triage against its anchors, in one run on one machine, with the same weights and client:

(1) raw: the model in this process (benchmarks/imaging.py's `raw`), one torch thread (a
    replica's) and all cores, measured before and after the served systems and averaged;
(2) plain-serve: a plain Ray Serve app (benchmarks/plain_serve.py: FastAPI ingress -> a
    `@serve.batch` model deployment), its own Ray in its own child process;
(3) medserve: `medserve serve` (serving.testing.process.running_server), optionally also with
    Ray Serve's HAProxy ingress (`medserve-haproxy`), throughput-optimized mode
    (`medserve-tput`, clients sent to the gateway replica's direct-ingress port) or two of that
    mode's flags alone, through the proxy (`medserve-loops`);
(4) triton: Triton directly (benchmarks/backends.py's build, one instance per replica).

Every HTTP system gets the same tritonclient binary OIP infer load (imaging.py's `served`),
the same replica count (the manifest's maximum, pinned), batching limits and request limits;
all stay up and take turns at each concurrency level, so the machine's drift spreads over them.
A route without a model, `GET /v2/health/live`, is timed at concurrency 1 on each system.

`--burst`: the shipped autoscaling settings instead (min..max replicas, not pinned); from idle
(one replica), an open-loop step to `--burst-factor` x one replica's capacity (the raw
one-thread batch throughput unless `--burst-rate`), on Medserve and then the plain app: time
until a second replica serves (its first call in the Serve replica logs), p95 of the
successful requests per 5 s window, time until p95 is back inside the manifest's SLO for good,
and failed requests.

    python benchmarks/anchors.py [--seconds 8] [--concurrency 1,8,16,32]
        [--systems plain-serve,medserve,triton[,medserve-haproxy,medserve-tput,medserve-loops]]
    python benchmarks/anchors.py --burst [--burst-s 60] [--burst-factor 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.http.aio as aioclient
from backends import pinned_scaling, start_triton, triton_copy  # this script's folder
from imaging import MODEL, ROOT, _input, raw, served
from rich.console import Console
from rich.table import Table

from loadtests.report.stats import percentile
from serving.net import free_port
from serving.repository.store import load_repository
from serving.testing.process import ServerProcess, running_server
from serving.triton.build import copy_with_backend

Row = dict[str, float]
console = Console(width=150)
PLAIN, MEDSERVE, TRITON = "plain-serve", "medserve", "triton"
# Medserve variants: the environment of the server process (Ray Serve 2.60 feature flags).
VARIANTS = {
    MEDSERVE: {},
    "medserve-haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1"},
    "medserve-tput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    # Two of its flags alone, still through Serve's proxy: user code on the replica's own loop
    # and each handle's router on its caller's loop (two thread hops less per call).
    "medserve-loops": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
                       "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"},
}
# Serve's direct-ingress HTTP ports (ray.serve._private.constants defaults).
DIRECT_INGRESS_PORTS = range(30000, 31001)
GATEWAY = "Gateway"
WINDOW_S = 5.0


# --- the systems ---------------------------------------------------------------------------

def start_plain(repo: Path, log: Path) -> ServerProcess:
    """benchmarks/plain_serve.py in its own process session and Ray (private RAY_TMPDIR), on a
    free port; stopped by its process group like `medserve serve`."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ray_tmpdir = tempfile.mkdtemp(prefix="ps-", dir="/tmp")  # short: Ray's socket paths
    env["RAY_TMPDIR"] = ray_tmpdir
    cmd = [sys.executable, str(Path(__file__).with_name("plain_serve.py")),
           "--repo", str(repo), "--model", MODEL, "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)
    return ServerProcess(proc, port, log, None, Path(ray_tmpdir))


@contextlib.contextmanager
def running_plain(repo: Path, log: Path) -> Iterator[ServerProcess]:
    srv = start_plain(repo, log)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def direct_ingress_env(variant: dict[str, str]) -> dict[str, str]:
    """Private direct-ingress port ranges for a variant that turns direct ingress on: every Ray
    instance on a machine starts at Serve's default port (30000), and two would collide."""
    if not variant:
        return {}
    rng = np.random.default_rng()
    while True:
        http, grpc = (int(rng.integers(20000, 29000)) for _ in range(2))
        if abs(http - grpc) > 20 and all(_free(p) for p in (*range(http, http + 8),
                                                                *range(grpc, grpc + 8))):
            break
    return {**variant,
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http + 7),
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc),
            "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc + 7)}


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on (its socket inodes in /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def direct_ingress_url(srv: ServerProcess, ports: range = DIRECT_INGRESS_PORTS,
                       timeout_s: float = 60.0) -> str:
    """host:port of the gateway replica's own HTTP server (Serve's direct ingress)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in srv.replica_pids(GATEWAY):
            found = sorted(p for p in listening_ports(pid) if p in ports)
            if found:
                return f"127.0.0.1:{found[0]}"
        time.sleep(0.5)
    raise RuntimeError(f"no direct-ingress port on the gateway replica; see {srv.log}")


@dataclass
class Systems:
    urls: dict[str, str]
    servers: dict[str, ServerProcess]


def start_systems(stack: contextlib.ExitStack, names: list[str], tmp: Path, *,
                  pinned: bool) -> Systems:
    source = ROOT / "model_repo"
    scaling: dict[str, object] = dict(pinned_scaling(source, MODEL)) if pinned else {}
    repo = copy_with_backend(source, tmp / "torch", [MODEL], backend="torch", scaling=scaling)
    urls: dict[str, str] = {}
    servers: dict[str, ServerProcess] = {}
    for name in names:
        if name == TRITON:
            replicas = pinned_scaling(source, MODEL)  # Triton has no autoscaling: the maximum
            urls[name] = start_triton(stack, triton_copy(source, tmp / "triton", MODEL, replicas),
                                      tmp).http_url
            continue
        if name == PLAIN:
            srv = stack.enter_context(running_plain(repo, tmp / f"{name}.log"))
        else:
            env = direct_ingress_env(VARIANTS[name])
            srv = stack.enter_context(running_server(
                "--repo", str(repo), log=tmp / f"{name}.log", cwd=ROOT, env=env))
        servers[name] = srv
        urls[name] = srv.host_port
        if name == "medserve-tput":  # the proxy stays as a fallback: go to the replica
            low = int(env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"])
            urls[name] = direct_ingress_url(srv, range(low, low + 8))
        console.print(f"{name}: {urls[name]} (log {tmp / f'{name}.log'}, pid {srv.pid})")
    return Systems(urls, servers)


# --- steady load ---------------------------------------------------------------------------

async def live(url: str, n: int) -> Row:
    """`GET /v2/health/live` one at a time (tritonclient's is_server_live): no model."""
    client = aioclient.InferenceServerClient(url)
    for _ in range(5):
        await client.is_server_live()
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        await client.is_server_live()
        lat.append(time.perf_counter() - t)
    await client.close()
    return {"p50_ms": percentile(lat, 50) * 1e3, "p99_ms": percentile(lat, 99) * 1e3}


def steady(args: argparse.Namespace, names: list[str], tmp: Path) -> None:
    levels = [int(c) for c in args.concurrency.split(",")]
    threads = [1, os.cpu_count() or 1]
    raws: dict[int, list[Row]] = {t: [raw(args.raw_seconds, t)] for t in threads}
    results: dict[str, list[Row]] = {n: [] for n in names}
    lives: dict[str, Row] = {}
    with contextlib.ExitStack() as stack:
        systems = start_systems(stack, names, tmp, pinned=True)
        for name in names:
            lives[name] = asyncio.run(live(systems.urls[name], args.live_requests))
        for c in levels:
            for name in names:
                results[name].append(asyncio.run(served(systems.urls[name], c, args.seconds)))
                r = results[name][-1]
                console.print(f"  {name:16} c={c:<3} {r['throughput']:7.1f} img/s  p50 "
                              f"{r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                              f"errors {r['errors']:.0f}", highlight=False)
    for t in threads:
        raws[t].append(raw(args.raw_seconds, t))
    report(names, results, raws, lives, tmp)


def report(names: list[str], results: dict[str, list[Row]], raws: dict[int, list[Row]],
           lives: dict[str, Row], tmp: Path) -> None:
    replicas = pinned_scaling(ROOT / "model_repo", MODEL)["max_replicas"]
    table = Table(title=f"{MODEL}: Medserve vs plain Ray Serve vs Triton direct, binary OIP over "
                  f"HTTP, {replicas} replicas/instances each (pinned), same batching")
    for col in ("system", "conc", "img/s", "p50 ms", "p99 ms", "errors", "img/s / plain",
                "img/s / triton", "p50 / plain", "p99 / plain"):
        table.add_column(col, justify="right")
    by = {n: {r["concurrency"]: r for r in results[n]} for n in names}

    def ratio(name: str, c: float, other: str, key: str) -> str:
        if other not in by or name == other:
            return ""
        return f"{by[name][c][key] / by[other][c][key]:.2f}"

    for name in names:
        for r in results[name]:
            c = r["concurrency"]
            table.add_row(name, f"{c:.0f}", f"{r['throughput']:.1f}", f"{r['p50_ms']:.1f}",
                          f"{r['p99_ms']:.1f}", f"{r['errors']:.0f}",
                          ratio(name, c, PLAIN, "throughput"), ratio(name, c, TRITON, "throughput"),
                          ratio(name, c, PLAIN, "p50_ms"), ratio(name, c, PLAIN, "p99_ms"))
        table.add_section()
    console.print(table)
    for t, runs in raws.items():
        tp = statistics.mean(r["throughput"] for r in runs)
        p50 = statistics.mean(r["p50_ms"] for r in runs)
        each = ", ".join(f"{r['throughput']:.1f}" for r in runs)
        console.print(f"raw, {t} torch thread(s): {tp:.1f} img/s at batch "
                      f"{runs[0]['batch']:.0f} (runs: {each}), batch-1 p50 {p50:.1f} ms",
                      highlight=False)
    raw_tp = statistics.mean(r["throughput"] for r in raws[1])
    for name in names:
        best = max(results[name], key=lambda r: r["throughput"])
        console.print(f"{name:16} peak {best['throughput']:.1f} img/s at concurrency "
                      f"{best['concurrency']:.0f} = x{best['throughput'] / raw_tp:.2f} raw "
                      f"(1 thread); /v2/health/live p50 {lives[name]['p50_ms']:.2f} ms, p99 "
                      f"{lives[name]['p99_ms']:.2f} ms", highlight=False)
    for name in (n for n in names if n.startswith(MEDSERVE)):
        for other in (PLAIN, TRITON):
            if other in names:
                peak = (max(r["throughput"] for r in results[name])
                        / max(r["throughput"] for r in results[other]))
                console.print(f"{name} / {other}: peak img/s x{peak:.2f}; per level "
                              + ", ".join(f"c={c:.0f} x{by[name][c]['throughput'] / by[other][c]['throughput']:.2f}"  # noqa: E501
                                          for c in by[name]), highlight=False)
        if PLAIN in names:
            d = lives[name]["p50_ms"] - lives[PLAIN]["p50_ms"]
            c1 = min(by[name])
            di = by[name][c1]["p50_ms"] - by[PLAIN][c1]["p50_ms"]
            console.print(f"{name} - {PLAIN}: /v2/health/live p50 {d:+.2f} ms; infer p50 at "
                          f"concurrency {c1:.0f} {di:+.2f} ms", highlight=False)
    console.print(f"logs in {tmp}")


# --- burst ---------------------------------------------------------------------------------

def serving_replicas(srv: ServerProcess, deployment: str, method: str,
                     seen: set[Path]) -> set[Path]:
    """Serve replica log files of `deployment` that have logged a finished `method` call (its
    access log: `CALL <method> OK`, not the readiness calls); `seen` ones are not read again."""
    assert srv.ray_tmpdir is not None
    pattern = f"session_2*/logs/serve/replica_*_{deployment}_*.log"  # not session_latest
    for path in [*srv.ray_tmpdir.glob(pattern), *srv.ray_tmpdir.glob(f"*/{pattern}")]:
        if path in seen:
            continue
        with contextlib.suppress(OSError), path.open("rb") as f:
            if any(f"CALL {method} OK".encode() in line for line in f):
                seen.add(path)
    return seen


@dataclass
class Burst:
    system: str
    rate: float
    second_replica_s: float | None
    windows: list[Row]
    failed: int
    sent: int
    recovered_s: float | None


Sample = tuple[float, float, bool]  # send time, latency, ok


async def open_loop(url: str, rate: float, seconds: float, srv: ServerProcess, deployment: str,
                    method: str, timeout_s: float) -> tuple[list[Sample], float | None]:
    """Requests at a constant `rate` for `seconds`, each on its own; (send time, latency, ok)
    of each, and the time the second replica of `deployment` first served."""
    client = aioclient.InferenceServerClient(url, conn_limit=2048)
    x = np.random.default_rng(1).standard_normal((1, 1, 224, 224)).astype(np.float32)
    await client.infer(MODEL, [_input(x)])
    seen = serving_replicas(srv, deployment, method, set())
    before = len(seen)
    out: list[Sample] = []
    second: float | None = None
    start = time.perf_counter()

    async def one(t_send: float) -> None:
        t = time.perf_counter()
        ok = True
        try:
            await asyncio.wait_for(client.infer(MODEL, [_input(x)]), timeout_s)
        except Exception:
            ok = False
        out.append((t_send, time.perf_counter() - t, ok))

    async def watch() -> None:
        nonlocal second
        while second is None:
            if len(serving_replicas(srv, deployment, method, seen)) >= max(2, before + 1):
                second = time.perf_counter() - start
                return
            await asyncio.sleep(0.25)

    watcher = asyncio.create_task(watch())
    tasks = []
    n = 0
    while (due := start + n / rate) < start + seconds:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(due - start)))
        n += 1
    await asyncio.gather(*tasks)
    if second is None:  # a last look: it may have served in the final moments
        serving_replicas(srv, deployment, method, seen)
        if len(seen) >= max(2, before + 1):
            second = time.perf_counter() - start
    watcher.cancel()
    await client.close()
    return out, second


def windows(samples: list[Sample], seconds: float) -> list[Row]:
    rows = []
    for i in range(int(np.ceil(seconds / WINDOW_S))):
        lo, hi = i * WINDOW_S, (i + 1) * WINDOW_S
        ok = [lat for t, lat, good in samples if lo <= t < hi and good]
        failed = sum(1 for t, _, good in samples if lo <= t < hi and not good)
        rows.append({"start_s": lo, "ok": len(ok), "failed": failed,
                     "p95_ms": percentile(ok, 95) * 1e3})
    return rows


def recovered(rows: list[Row], threshold_ms: float) -> float | None:
    """End of the last window whose p95 is outside the SLO (0 if none was); None if the last
    window is still outside."""
    bad = [r for r in rows if not r["p95_ms"] <= threshold_ms]  # NaN (nothing served): bad
    if not bad:
        return 0.0
    if bad[-1] is rows[-1]:
        return None
    return bad[-1]["start_s"] + WINDOW_S


def wait_one_replica(srv: ServerProcess, deployment: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len(srv.replica_pids(deployment)) != 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{deployment} did not settle at one replica in {timeout_s:g} s")
        time.sleep(1)


def burst(args: argparse.Namespace, tmp: Path) -> None:
    manifest = load_repository(ROOT / "model_repo").manifest(MODEL)
    slo = manifest.slo
    threshold_ms = slo.latency_threshold_s * 1e3
    capacity = raw(args.raw_seconds, 1)["throughput"]
    rate = args.burst_rate or args.burst_factor * capacity
    s = manifest.scaling
    console.print(f"one replica's capacity (raw, 1 thread, batch {manifest.batching.max_batch_size}"
                  f"): {capacity:.1f} img/s; step from idle to {rate:.1f} req/s for "
                  f"{args.burst_s:g} s; autoscaling {s.min_replicas}..{s.max_replicas} replicas, "
                  f"target {s.target_ongoing_requests} ongoing; SLO "
                  f"p{slo.latency_objective * 100:g} <= {threshold_ms:.0f} ms", highlight=False)
    names = [n for n in args.systems.split(",") if n in (MEDSERVE, PLAIN)]
    # (deployment, replica method an infer request calls)
    deployments = {MEDSERVE: (f"{MODEL}-v{manifest.served_version}", "infer"),
                   PLAIN: (MODEL, "predict")}
    bursts = []
    with contextlib.ExitStack() as stack:
        systems = start_systems(stack, names, tmp, pinned=False)
        for name in names:  # one at a time: a burst takes the whole machine
            deployment, method = deployments[name]
            srv = systems.servers[name]
            wait_one_replica(srv, deployment, args.idle_timeout_s)
            time.sleep(args.idle_s)
            samples, second = asyncio.run(open_loop(systems.urls[name], rate, args.burst_s, srv,
                                                    deployment, method,
                                                    args.request_timeout_s))
            rows = windows(samples, args.burst_s)
            bursts.append(Burst(name, rate, second, rows, sum(not ok for *_, ok in samples),
                                len(samples), recovered(rows, threshold_ms)))
    table = Table(title=f"{MODEL}: burst from idle to {rate:.1f} req/s "
                  f"({rate / capacity:.1f}x one replica), p95 of successful requests per "
                  f"{WINDOW_S:g} s window (by send time); SLO {threshold_ms:.0f} ms")
    table.add_column("window s", justify="right")
    for b in bursts:
        table.add_column(f"{b.system} p95 ms", justify="right")
        table.add_column(f"{b.system} ok/failed", justify="right")
    for i, w in enumerate(bursts[0].windows):
        cells = [f"{w['start_s']:g}-{w['start_s'] + WINDOW_S:g}"]
        for b in bursts:
            r = b.windows[i]
            cells += [f"{r['p95_ms']:.0f}", f"{r['ok']:.0f}/{r['failed']:.0f}"]
        table.add_row(*cells)
    console.print(table)
    for b in bursts:
        sec = "never" if b.second_replica_s is None else f"{b.second_replica_s:.1f} s"
        rec = "not within the run" if b.recovered_s is None else f"{b.recovered_s:g} s"
        console.print(f"{b.system:12} second replica serving after {sec}; p95 back inside the "
                      f"SLO after {rec}; failed {b.failed}/{b.sent} ({b.failed / b.sent:.1%})",
                      highlight=False)
    console.print(f"logs in {tmp}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="Duration of each level.")
    parser.add_argument("--raw-seconds", type=float, default=8.0, help="Each raw measurement.")
    parser.add_argument("--concurrency", default="1,8,16,32")
    parser.add_argument("--systems", default=f"{PLAIN},{MEDSERVE},{TRITON}",
                        help=f"Among {PLAIN}, {TRITON}, {', '.join(VARIANTS)}; --burst runs "
                        f"{MEDSERVE} and {PLAIN} of them.")
    parser.add_argument("--live-requests", type=int, default=300)
    parser.add_argument("--burst", action="store_true", help="The autoscaling burst instead.")
    parser.add_argument("--burst-s", type=float, default=120.0)
    parser.add_argument("--burst-factor", type=float, default=3.0)
    parser.add_argument("--burst-rate", type=float, help="req/s (default: factor x capacity).")
    parser.add_argument("--idle-s", type=float, default=5.0, help="Idle before the step.")
    parser.add_argument("--idle-timeout-s", type=float, default=900.0)
    parser.add_argument("--request-timeout-s", type=float, default=60.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-anchors-"))
    if args.burst:
        burst(args, tmp)
        return
    names = args.systems.split(",")
    unknown = set(names) - {PLAIN, TRITON, *VARIANTS}
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}")
    steady(args, names, tmp)


if __name__ == "__main__":
    main()
