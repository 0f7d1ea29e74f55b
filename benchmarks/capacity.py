"""Capacity-planner validation: the highest rate one local replica holds within its SLO,
predicted by the planner's queueing model, then measured with the open-loop load test.

1. start Medserve with only the model, pinned to one replica (as `medserve capacity` does);
2. profile it (closed-loop concurrency sweep) and fit the planner's station: a batch server
   for a model that batches (a batch of k takes the p50 measured at concurrency k), M/D/1
   for one that does not;
3. predict the highest Poisson rate with P(latency <= threshold) >= objective;
4. measure: open-loop gate runs at constant rates around the prediction; the measured limit
   is where the fraction under the threshold crosses the objective, linearly interpolated
   between the last rate that held and the first that did not;
5. print predicted vs measured and the relative error (target: within 15%).

Run it on a quiet machine: the prediction and the measurements are minutes apart, and a
neighbour's CPU load in between moves one but not the other. `--target stub` runs the same
procedure against loadtests/run/stub.py (one FIFO server, fixed service time, no CPU work): a
control that checks the method (profile, fit, M/D/1 as it does not batch, open-loop
measurement) apart from noise.

    python benchmarks/capacity.py [--target medserve|stub] [--model cxr-triage] [--run-s 60]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from loadtests.capacity.planner import fit
from loadtests.capacity.profiler import ModelProfile, profile_http
from loadtests.capacity.queueing import Arrivals
from loadtests.run.gate import run_gate
from loadtests.run.local import one_replica_server
from loadtests.run.stub import running_stub
from loadtests.traffic.profiles import Payloads, all_manifests, kind_of
from serving.repository.store import load_repository

ROOT = Path(__file__).resolve().parent.parent
console = Console(width=140)


@dataclass(frozen=True)
class Point:
    rate: float
    under: float
    errors: float
    held: bool


def measure(url: str, model: str, rate: float, run_s: float, repo: Path, out: Path) -> Point:
    name = f"validate-{rate:.2f}"
    profile = {"name": name, "duration_s": run_s, "max_in_flight": 256,
               "models": {model: {"rate_rps": rate}}, "payloads": Payloads().model_dump()}
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(profile))
    result = run_gate(str(path), url, out / name, repo).results[0]
    return Point(rate, result.metrics[0].under, result.error_ratio, result.passed)


def crossing(points: list[Point], objective: float) -> tuple[float, str]:
    """Where the fraction under the threshold crosses the objective, with a qualifier."""
    ordered = sorted(points, key=lambda p: p.rate)
    for lo, hi in itertools.pairwise(ordered):
        if lo.held and not hi.held:
            if lo.under <= hi.under:  # noise made the curve rise: take the midpoint
                return (lo.rate + hi.rate) / 2, "midpoint"
            return lo.rate + (lo.under - objective) / (lo.under - hi.under) * (hi.rate - lo.rate), \
                "interpolated"
    if all(p.held for p in ordered):
        return ordered[-1].rate, "lower bound (every rate held)"
    return ordered[0].rate, "upper bound (no rate held)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cxr-triage")
    parser.add_argument("--seconds", type=float, default=8.0, help="Per profiling level.")
    parser.add_argument("--run-s", type=float, default=60.0, help="Per measured rate.")
    parser.add_argument("--factors", default="0.6,0.8,0.9,1.0,1.1,1.25",
                        help="Measured rates, as multiples of the predicted limit.")
    parser.add_argument("--target", choices=("medserve", "stub"), default="medserve")
    parser.add_argument("--stub-service-s", type=float, default=0.1)
    args = parser.parse_args()
    repo = load_repository(ROOT / "model_repo")
    manifest = all_manifests(repo)[args.model]
    kind = kind_of(manifest)
    tmp = Path(tempfile.mkdtemp(prefix="capacity-validation-"))
    console.print(f"target {args.target}; reports in {tmp}")
    with contextlib.ExitStack() as stack:
        if args.target == "stub":
            url = stack.enter_context(running_stub(args.stub_service_s))
        else:
            url = stack.enter_context(one_replica_server(repo.root, [args.model])).url
        levels = profile_http(url, args.model, kind, Payloads(), [], args.seconds)
        # The stub serves one request at a time; Medserve batches as the manifest says.
        f = fit(ModelProfile(args.model, kind, levels), manifest,
                max_batch=1 if args.target == "stub" else None)
        target = f.target
        predicted = f.station.max_rate(1, target.threshold_s, target.objective, Arrivals.make())
        console.print(f"profile: {f.basis}; predicted limit {predicted:.2f} req/s")
        points = [measure(url, args.model, predicted * float(x), args.run_s, repo.root, tmp)
                  for x in args.factors.split(",")]
    table = Table(title=f"{args.model} ({args.target}): open-loop runs of {args.run_s:g} s, "
                        f"one replica, SLO {target.threshold_s:g} s at {target.objective:g}")
    for col in ("rate req/s", "x predicted", "under threshold", "errors", "held"):
        table.add_column(col, justify="right")
    for p in points:
        table.add_row(f"{p.rate:.2f}", f"{p.rate / predicted:.2f}", f"{p.under:.4f}",
                      f"{p.errors:.2%}", "yes" if p.held else "no")
    console.print(table)
    for lv in levels:
        console.print(f"  profile c={lv.concurrency}: {lv.throughput:.2f} req/s, p50 "
                      f"{lv.p50_s * 1e3:.0f} ms, p99 {lv.p99_s * 1e3:.0f} ms")
    measured, how = crossing(points, target.objective)
    error = (predicted - measured) / measured
    console.print(f"predicted {predicted:.2f} req/s, measured {measured:.2f} req/s ({how}); "
                  f"error {error:+.1%} (target within 15%)")


if __name__ == "__main__":
    main()
