"""Judging a soak: once the server is warm, does memory grow, does anything fail, does the
latency tail drift? A soak is about drift, not the SLO itself (the gate judges that), so each
check compares the run with its own early minutes.

The 30-minute plan: RSS sampled every minute, 5 minutes of warm-up, p99 per 5-minute window;
minutes 5-10 are the baseline the last 5 minutes are held to. A shorter run keeps the same
proportions (`SoakPlan.scaled`), so the short test in `make test` runs this same code.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from loadtests.generator.openloop import Record
from loadtests.report.stats import percentile

FULL_S = 1800.0  # the real soak: 30 minutes
SHOWN_FAILURES = 10  # failed requests the verdict names one by one


class SoakPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    duration_s: float = Field(FULL_S, gt=0, description="Length of the arrival schedule.")
    sample_s: float = Field(60.0, gt=0, description="Seconds between RSS samples.")
    warmup_s: float = Field(300.0, ge=0, description="RSS growth is counted from here.")
    window_s: float = Field(300.0, gt=0, description="Width of each p99 window.")

    @classmethod
    def scaled(cls, duration_s: float) -> SoakPlan:
        """The 30-minute plan's proportions over `duration_s`."""
        f = duration_s / FULL_S
        return cls(duration_s=duration_s, sample_s=60.0 * f, warmup_s=300.0 * f,
                   window_s=300.0 * f)

    @property
    def baseline(self) -> tuple[float, float]:
        """Minutes 5-10 of the 30-minute plan: the first window after warm-up."""
        return self.warmup_s, self.warmup_s + self.window_s

    @property
    def last(self) -> tuple[float, float]:
        return self.duration_s - self.window_s, self.duration_s


class SoakLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rss_growth: float = Field(0.10, gt=0, description="Most RSS growth after warm-up.")
    p99_drift: float | None = Field(
        0.20, gt=0, description="Most p99 rise, last window vs baseline; None: reported only.")
    max_errors: int = Field(0, ge=0, description="Failed requests allowed in the whole run.")
    # A few MiB of allocator jitter is 10% of a 30 MiB helper; the leaks that matter are in
    # the replicas, proxy and gateway, all hundreds of MiB. They and the total are judged.
    min_rss_mib: float = Field(100.0, ge=0, description="Per-process growth judged from here.")
    # p99 of fewer requests is their maximum: one slow request, not a tail.
    min_samples: int = Field(50, ge=1, description="Requests per window to judge its p99.")


@dataclass(frozen=True)
class RssSample:
    t_s: float  # since the load test started
    pid: int
    name: str  # Ray retitles a worker when it becomes a replica: rows go by pid
    rss_mib: float
    cpu_s: float = 0.0  # the process's CPU time so far (user + system)


def _names(rss: Sequence[RssSample]) -> dict[int, str]:
    """pid -> its row label, with the last title the process had."""
    return {s.pid: f"{s.name} [{s.pid}]" for s in sorted(rss, key=lambda s: s.t_s)}


def cpu_percent(rss: Sequence[RssSample], cores: int) -> list[tuple[float, float]]:
    """(sample time, % of the machine's cores the processes used since the sample before)."""
    times = sorted({s.t_s for s in rss})
    at = {(s.pid, s.t_s): s.cpu_s for s in rss}
    out = []
    for a, b in pairwise(times):
        used = sum(at[(pid, b)] - at[(pid, a)] for pid, t in at if t == a and (pid, b) in at)
        out.append((b, 100 * used / (b - a) / cores))
    return out


@dataclass(frozen=True)
class SoakVerdict:
    passed: bool
    lines: list[str]  # one per check, each with its figures


def _windows(plan: SoakPlan) -> list[tuple[float, float]]:
    edges, t = [], 0.0
    while t < plan.duration_s - 1e-6:
        edges.append((t, min(t + plan.window_s, plan.duration_s)))
        t += plan.window_s
    return edges


def _in(records: Sequence[Record], lo: float, hi: float) -> list[Record]:
    return [r for r in records if lo <= r.intended_s < hi]


def p99_ms(records: Sequence[Record]) -> float:
    return percentile([r.latency_s for r in records if r.ok and r.latency_s is not None],
                      99) * 1e3


Checks = tuple[bool, list[str]]  # all held, one line per check with its figures


def _errors(limits: SoakLimits, records: Sequence[Record]) -> Checks:
    failed = sorted((r for r in records if not r.ok), key=lambda r: r.intended_s)
    ok = len(failed) <= limits.max_errors and bool(records)
    lines = [f"{'ok' if ok else 'FAIL'}  errors: {len(failed)} of {len(records)} requests "
             f"(limit {limits.max_errors})"]
    for r in failed[:SHOWN_FAILURES]:  # what went wrong, so a failed run can be read
        lines.append(f"      {r.model}, sent at {r.intended_s:.1f} s: {r.failure}")
    if len(failed) > SHOWN_FAILURES:
        lines.append(f"      ... {len(failed) - SHOWN_FAILURES} more")
    return ok, lines


def _rss(plan: SoakPlan, limits: SoakLimits, rss: Sequence[RssSample]) -> Checks:
    """Growth from the end of warm-up to the last sample: the total of the processes there
    from the start, and each large process. One started later (a replica the autoscaler
    added) is judged from the end of its own warm-up, since it is still loading its model at
    first, and left out of the total."""
    times = sorted({s.t_s for s in rss})
    start = next((t for t in times if t >= plan.warmup_s), None)
    if start is None or start == times[-1]:
        return False, ["FAIL  RSS: no samples after warm-up"]
    end, names, lines = times[-1], _names(rss), []
    at = {(s.pid, s.t_s): s.rss_mib for s in rss}
    born: dict[int, float] = {}
    for s in sorted(rss, key=lambda s: s.t_s):
        born.setdefault(s.pid, s.t_s)
    alive = sorted(p for p in born if (p, end) in at)
    old = [p for p in alive if born[p] == times[0] and (p, start) in at]
    judged = [("total", sum(at[p, start] for p in old), sum(at[p, end] for p in old))]
    for p in alive:
        since = start if born[p] == times[0] else next(
            (t for t in times if t >= born[p] + plan.warmup_s and (p, t) in at), end)
        if since == end:
            lines.append(f"--    RSS {names[p]}: started at {born[p]:.0f} s, still in its "
                         "warm-up at the end: not judged")
        elif at.get((p, since), 0.0) >= limits.min_rss_mib:
            label = names[p] if since == start else f"{names[p]} (from {since:.0f} s)"
            judged.append((label, at[p, since], at[p, end]))
    ok = True
    for name, a, b in judged:
        growth = (b - a) / a if a else 0.0
        good = growth < limits.rss_growth
        ok &= good
        lines.append(f"{'ok' if good else 'FAIL'}  RSS {name}: {a:.0f} -> {b:.0f} MiB "
                     f"({growth:+.1%}, limit +{limits.rss_growth:.0%})")
    return ok, lines


def _p99(plan: SoakPlan, limits: SoakLimits, records: Sequence[Record]) -> Checks:
    ok, lines = True, []
    for model in sorted({r.model for r in records}):
        mine = [r for r in records if r.model == model]
        base, last = _in(mine, *plan.baseline), _in(mine, *plan.last)
        if min(len(base), len(last)) < limits.min_samples:
            lines.append(f"--    p99 {model}: {len(base)} and {len(last)} requests in the "
                         f"windows, under {limits.min_samples}: not judged")
            continue
        a, b = p99_ms(base), p99_ms(last)
        seen = f"p99 {model}: {a:.0f} ms (baseline) -> {b:.0f} ms (last window), {b / a - 1:+.1%}"
        if limits.p99_drift is None:
            lines.append(f"--    {seen}: no limit set, not judged")
            continue
        good = b <= a * (1 + limits.p99_drift)
        ok &= good
        lines.append(f"{'ok' if good else 'FAIL'}  {seen}, limit +{limits.p99_drift:.0%}")
    return ok, lines


def judge(plan: SoakPlan, limits: SoakLimits, records: Sequence[Record],
          rss: Sequence[RssSample]) -> SoakVerdict:
    checks = [_errors(limits, records), _rss(plan, limits, rss), _p99(plan, limits, records)]
    return SoakVerdict(all(ok for ok, _ in checks), [line for _, ls in checks for line in ls])


def table(plan: SoakPlan, records: Sequence[Record], rss: Sequence[RssSample],
          cores: int) -> str:
    """RSS per process per sample and the processes' CPU use, then requests, errors and p99
    per window and model."""
    times = sorted({s.t_s for s in rss})
    by = {(s.pid, s.t_s): s.rss_mib for s in rss}
    names = _names(rss)
    pids = sorted(names, key=lambda p: -max(by.get((p, t), 0) for t in times))
    unit = "min" if plan.sample_s >= 60 else "s"
    scale = 60.0 if unit == "min" else 1.0
    out = [f"RSS (MiB) per process; columns: {unit} since the load started",
           f"{'process':<52}" + "".join(f"{t / scale:>7.0f}" for t in times)]
    for p in pids:
        out.append(f"{names[p][-52:]:<52}" + "".join(
            f"{by[(p, t)]:>7.0f}" if (p, t) in by else f"{'-':>7}" for t in times))
    out.append(f"{'total':<52}" + "".join(
        f"{sum(v for (_, tt), v in by.items() if tt == t):>7.0f}" for t in times))
    out.append(f"{f'CPU, % of {cores} cores':<52}{'':>7}" + "".join(
        f"{pct:>7.0f}" for _, pct in cpu_percent(rss, cores)))
    out += ["", f"{'window (s)':<14}{'model':<18}{'requests':>9}{'errors':>8}{'p99 ms':>9}"]
    for lo, hi in _windows(plan):
        for model in sorted({r.model for r in records}):
            mine = _in([r for r in records if r.model == model], lo, hi)
            out.append(f"{f'{lo:.0f}-{hi:.0f}':<14}{model:<18}{len(mine):>9}"
                       f"{sum(not r.ok for r in mine):>8}{p99_ms(mine):>9.0f}")
    return "\n".join(out) + "\n"


def write_csv(path: Path, rss: Sequence[RssSample]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "pid", "process", "rss_mib", "cpu_s"])
        w.writerows([f"{s.t_s:.1f}", s.pid, s.name, f"{s.rss_mib:.1f}", f"{s.cpu_s:.2f}"]
                    for s in rss)


def plot(path: Path, plan: SoakPlan, limits: SoakLimits, records: Sequence[Record],
         rss: Sequence[RssSample]) -> None:
    """RSS over time (the big processes and the total) and p99 per window per model."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and CI
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8))
    times = sorted({s.t_s for s in rss})
    for pid, name in sorted(_names(rss).items()):
        mine = [s for s in rss if s.pid == pid]
        if max(s.rss_mib for s in mine) >= limits.min_rss_mib:
            label = name.replace("ray::ServeReplica:", "replica ")[:44]
            top.plot([s.t_s / 60 for s in mine], [s.rss_mib for s in mine], label=label)
    top.plot([t / 60 for t in times], [sum(s.rss_mib for s in rss if s.t_s == t)
                                       for t in times], "k--", label="total")
    top.axvline(plan.warmup_s / 60, color="grey", linestyle=":", label="end of warm-up")
    top.set(xlabel="minutes", ylabel="RSS (MiB)", title="Medserve processes' RSS")
    top.legend(fontsize=6, loc="upper left", ncol=2)
    mids = [(lo + hi) / 2 / 60 for lo, hi in _windows(plan)]
    for model in sorted({r.model for r in records}):
        theirs = [r for r in records if r.model == model]
        bottom.plot(mids, [p99_ms(_in(theirs, lo, hi)) for lo, hi in _windows(plan)], "o-",
                    label=model)
    bottom.set(xlabel="minutes (window middle)", ylabel="p99 (ms)", yscale="log",
               title=f"p99 per {plan.window_s:.0f} s window")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
