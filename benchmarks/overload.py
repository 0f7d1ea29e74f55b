"""Overload benchmark: stat p95 against the SLO and routine shed latency at 3x capacity.

Measures cxr-triage's served capacity closed-loop, then sends Poisson arrivals at `--factor`
times it (one request in `--stat-every` stat, the rest routine) and prints the figures: stat
latency against the model's SLO threshold, how fast routine requests are shed, the counts by
outcome. Without `--url` it starts a Medserve with cxr-triage only, on one replica behind a
small gateway queue, so that 3x capacity is cheap to reach on a small machine.

    python benchmarks/overload.py [--factor 3] [--seconds 10] [--url http://HOST:PORT]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from loadtests.run.local import edited_repository
from loadtests.run.overload import run_overload
from serving.repository.store import load_repository
from serving.testing.process import running_server

ROOT = Path(__file__).resolve().parent.parent
MODEL = "cxr-triage"
console = Console()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running Medserve (default: start one)")
    parser.add_argument("--factor", type=float, default=3.0, help="offered load / capacity")
    parser.add_argument("--seconds", type=float, default=10.0, help="open-loop duration")
    parser.add_argument("--stat-every", type=int, default=10, help="one stat in N requests")
    parser.add_argument("--max-concurrent", type=int, default=2,
                        help="admission.max_concurrent of the started server")
    parser.add_argument("--max-queued", type=int, default=4,
                        help="admission.max_queued of the started server")
    args = parser.parse_args()
    slo_s = load_repository(ROOT / "model_repo").manifest(MODEL).slo.latency_threshold_s

    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="overload-")))
            # cxr-triage alone, one replica, the given admission limits; weights linked.
            repo = edited_repository(ROOT / "model_repo", tmp / "repo", {MODEL: {
                "scaling": {"min_replicas": 1, "max_replicas": 1,
                            "max_ongoing_requests": args.max_concurrent},
                "admission": {"max_concurrent": args.max_concurrent,
                              "max_queued": args.max_queued},
            }})
            (tmp / "medserve.yaml").write_text(yaml.safe_dump({"ray": {"num_cpus": 8}}))
            console.print("starting Medserve (cxr-triage only) ...")
            srv = stack.enter_context(running_server(
                "--repo", str(repo), "--config", str(tmp / "medserve.yaml"),
                log=tmp / "server.log", cwd=ROOT,
            ))
            url = srv.url
        run = run_overload(url, model=MODEL, factor=args.factor, duration_s=args.seconds,
                           stat_every=args.stat_every, concurrency=args.max_concurrent * 2)

    f = run.figures()
    statuses: dict[int, int] = {}
    for o in run.outcomes:
        statuses[o.status] = statuses.get(o.status, 0) + 1
    table = Table(title=f"{MODEL} at {args.factor:g}x capacity (SLO {slo_s * 1e3:.0f} ms)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("capacity (req/s, closed loop)", f"{f['capacity_per_s']:.1f}"),
        ("offered (req/s, open loop)", f"{f['offered_per_s']:.1f}"),
        ("requests / by status", f"{f['requests']} / {dict(sorted(statuses.items()))}"),
        ("stat ok / not ok", f"{f['stat_ok']} / {f['stat_not_ok']}"),
        ("stat p50 / p95 (ms)", f"{f['stat_p50_ms']:.0f} / {f['stat_p95_ms']:.0f}"),
        ("stat p95 within SLO", str(f["stat_p95_ms"] <= slo_s * 1e3)),
        ("routine ok / p95 (ms)", f"{f['routine_ok']} / {f['routine_ok_p95_ms']:.0f}"),
        ("routine shed on arrival / p50 / p99 (ms)",
         f"{f['refused']} / {f['refused_p50_ms']:.1f} / {f['refused_p99_ms']:.1f}"),
        ("routine preempted in queue / p50 / p99 (ms)",
         f"{f['preempted']} / {f['preempted_p50_ms']:.1f} / {f['preempted_p99_ms']:.1f}"),
        ("shed with Retry-After", f"{sum(bool(o.retry_after) for o in run.shed)}/{f['shed']}"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    main()
