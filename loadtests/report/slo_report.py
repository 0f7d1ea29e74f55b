"""The SLO report of a load test: a text table, a CSV summary and a latency-over-time plot."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from loadtests.generator.openloop import Record
from loadtests.report.slo import PERCENTILES, ModelResult

_HEAD = ("model", "metric", "requests", "ok/s", "errors", *(f"p{q:g}" for q in PERCENTILES),
         "under", "objective", "verdict")


def _ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1e3:.0f}ms"  # NaN: no samples


def rows(results: Sequence[ModelResult]) -> list[list[str]]:
    out = []
    for r in results:
        for m in r.metrics:
            out.append([
                r.slo.model, f"{m.target.metric}<={m.target.threshold_s:g}s", str(r.requests),
                f"{r.throughput:.2f}", f"{r.error_ratio:.2%}",
                *(_ms(m.percentiles[q]) for q in PERCENTILES),
                f"{m.under:.4f}", f"{m.target.objective:g}", "ok" if m.met else "MISS",
            ])
    return out


def text(
    title: str, results: Sequence[ModelResult], notes: Sequence[str], passed: bool
) -> str:
    table = [list(_HEAD), *rows(results)]
    widths = [max(len(row[i]) for row in table) for i in range(len(_HEAD))]
    lines = [title, ""]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                        enumerate(zip(row, widths, strict=True))) for row in table]
    lines.append("")
    for r in results:
        budget = "within" if r.within_budget else "OVER" if r.requests else "no requests"
        lines.append(f"{r.slo.model}: SLO from {r.slo.source}; error budget "
                     f"{r.slo.error_budget:.2%}, used {r.error_ratio:.2%} ({budget}); "
                     f"{r.not_sent} not sent; load generator send lag p99 "
                     f"{_ms(r.send_lag_p99_s)}")
        lines += [f"  error {kind}: {n}" for kind, n in sorted(r.errors.items())]
        lines += [f"  FAIL {why}" for why in r.failures()]
    lines += [f"note: {n}" for n in notes]
    lines += ["", f"VERDICT: {'PASS' if passed else 'FAIL'}"]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, results: Sequence[ModelResult]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(_HEAD)
        writer.writerows(rows(results))


def plot(path: Path, results: Sequence[ModelResult], records: Sequence[Record]) -> None:
    """Latency of every request against its intended start, per model and metric, with the
    threshold: a stall shows as a ramp, since latency is counted from the intended start."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and CI
    import matplotlib.pyplot as plt

    panels = [(r, m) for r in results for m in r.metrics if m.target.metric != "itl"]
    fig, axes = plt.subplots(len(panels) or 1, 1, figsize=(10, 3 * max(len(panels), 1)),
                             squeeze=False)
    for ax, (r, m) in zip(axes[:, 0], panels, strict=False):
        mine = [x for x in records if x.model == r.slo.model]
        ok = [x for x in mine if x.ok]
        key = "ttft_s" if m.target.metric == "ttft" else "latency_s"
        xs = [x.intended_s for x in ok if getattr(x, key) is not None]
        ys = [getattr(x, key) for x in ok if getattr(x, key) is not None]
        ax.scatter(xs, ys, s=6, alpha=0.6, label=f"{m.target.metric} (ok)")
        failed = [x.intended_s for x in mine if not x.ok]
        if failed:
            top = max([*ys, m.target.threshold_s]) * 1.2
            ax.scatter(failed, [top] * len(failed), marker="x", color="red", label="failed")
        ax.axhline(m.target.threshold_s, color="black", linestyle="--",
                   label=f"threshold {m.target.threshold_s:g} s (objective {m.target.objective:g})")
        ax.set_yscale("log")
        ax.set_ylabel("seconds")
        verdict = "ok" if m.met else "MISS"
        ax.set_title(f"{r.slo.model} {m.target.metric}: {m.under:.2%} under threshold [{verdict}]")
        ax.legend(loc="upper left", fontsize=8)
    axes[-1, 0].set_xlabel("intended start (s since the schedule began)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
