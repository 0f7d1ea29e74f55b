"""The soak's checks on synthetic runs: a leak, a failure and a drifting tail each fail it;
warm-up growth, small helpers and sparse windows do not."""

from __future__ import annotations

from loadtests.generator.openloop import Record
from loadtests.report.soak import (
    SHOWN_FAILURES,
    RssSample,
    SoakLimits,
    SoakPlan,
    cpu_percent,
    judge,
    table,
)

PLAN = SoakPlan()  # the 30-minute plan
LIMITS = SoakLimits()


def rss(replica_growth: float = 0.0, helper_growth: float = 0.0) -> list[RssSample]:
    """A replica of 1000 MiB that doubles during warm-up, then grows by `replica_growth`,
    and a 30 MiB helper that grows by `helper_growth` after warm-up."""
    out = []
    for minute in range(31):
        t = 60.0 * minute
        after = max(0.0, (t - PLAN.warmup_s) / (PLAN.duration_s - PLAN.warmup_s))
        replica = 1000.0 * min(2.0, 1 + t / PLAN.warmup_s) * (1 + replica_growth * after)
        out.append(RssSample(t, 10, "ray::ServeReplica:medserve:cxr-triage-v1", replica, t / 2))
        out.append(RssSample(t, 11, "raylet", 30.0 * (1 + helper_growth * after), t / 100))
    return out


def with_new_replica(born_minute: int, growth: float = 0.0) -> list[RssSample]:
    """`rss()` plus a replica that starts at `born_minute`, loads from 200 to 1000 MiB over
    its first warm-up, then grows by `growth` until the end."""
    out = rss()
    for minute in range(born_minute, 31):
        t = 60.0 * minute
        age = t - 60.0 * born_minute
        loaded = 200.0 + 800.0 * min(1.0, age / PLAN.warmup_s)
        later = max(0.0, (age - PLAN.warmup_s) / (PLAN.duration_s - 60.0 * born_minute))
        out.append(RssSample(t, 12, "ray::ServeReplica:medserve:cxr-triage-v1", loaded
                             * (1 + growth * later), t / 2))
    return out


def records(last_p99_s: float = 0.2, failed_at: float | None = None) -> list[Record]:
    """10 req/s of cxr-triage at 0.1 s, one in fifty at 0.2 s (the p99), and that tail at
    `last_p99_s` in the last window; one failure at `failed_at`."""
    out = []
    for i in range(int(PLAN.duration_s * 10)):
        t = i / 10
        slow = last_p99_s if t >= PLAN.last[0] else 0.2
        latency = slow if i % 50 == 0 else 0.1
        out.append(Record("cxr-triage", t, latency, ok=True, status=200))
    out += [Record("lung-nodule-ct", t, 1.0, ok=True, status=200) for t in (400.0, 1600.0)]
    if failed_at is not None:
        out.append(Record("cxr-triage", failed_at, None, ok=False, status=503))
    return out


def test_a_steady_run_passes_despite_warm_up_growth_and_sparse_windows() -> None:
    verdict = judge(PLAN, LIMITS, records(), rss())
    assert verdict.passed, verdict.lines
    assert any("lung-nodule-ct" in line and "not judged" in line for line in verdict.lines)


def test_a_leaking_replica_fails() -> None:
    verdict = judge(PLAN, LIMITS, records(), rss(replica_growth=0.15))
    assert not verdict.passed
    assert any(line.startswith("FAIL  RSS ray::ServeReplica") for line in verdict.lines)


def test_a_small_helper_is_judged_only_through_the_total() -> None:
    assert judge(PLAN, LIMITS, records(), rss(helper_growth=0.5)).passed


def test_a_replica_added_mid_run_is_judged_from_its_own_warm_up() -> None:
    verdict = judge(PLAN, LIMITS, records(), with_new_replica(born_minute=4))
    assert verdict.passed, verdict.lines  # 200 -> 1000 MiB while it loads is not a leak
    assert any("[12] (from 540 s)" in line and line.startswith("ok") for line in verdict.lines)
    leaking = judge(PLAN, LIMITS, records(), with_new_replica(born_minute=4, growth=0.3))
    assert not leaking.passed
    assert any(line.startswith("FAIL  RSS") and "[12]" in line for line in leaking.lines)


def test_a_replica_added_too_late_to_warm_up_is_not_judged() -> None:
    verdict = judge(PLAN, LIMITS, records(), with_new_replica(born_minute=27))
    assert verdict.passed, verdict.lines
    assert any(line.startswith("--    RSS") and "[12]" in line and "not judged" in line
               for line in verdict.lines)


def test_one_failed_request_fails_and_is_named() -> None:
    verdict = judge(PLAN, LIMITS, records(failed_at=900.0), rss())
    assert not verdict.passed and verdict.lines[0].startswith("FAIL  errors: 1 of")
    assert verdict.lines[1].split() == ["cxr-triage,", "sent", "at", "900.0", "s:", "HTTP", "503"]


def test_many_failures_are_named_earliest_first_up_to_a_limit() -> None:
    failures = [Record("cxr-triage", 100.0 - i, None, error="ConnectionError: reset")
                for i in range(SHOWN_FAILURES + 3)]
    lines = judge(PLAN, LIMITS, records() + failures, rss()).lines
    named = [line for line in lines if "sent at" in line]
    assert len(named) == SHOWN_FAILURES and named[0].endswith(
        f"at {100.0 - SHOWN_FAILURES - 2:.1f} s: ConnectionError: reset")
    assert lines[SHOWN_FAILURES + 1].strip() == "... 3 more"


def test_a_tail_drifting_past_the_limit_fails_and_one_within_it_passes() -> None:
    assert not judge(PLAN, LIMITS, records(last_p99_s=0.25), rss()).passed  # +25%
    assert judge(PLAN, LIMITS, records(last_p99_s=0.23), rss()).passed  # +15%


def test_without_a_p99_limit_the_tail_is_reported_not_judged() -> None:
    verdict = judge(PLAN, SoakLimits(p99_drift=None), records(last_p99_s=2.0), rss())
    assert verdict.passed
    assert "--    p99 cxr-triage: 200 ms (baseline) -> 2000 ms (last window), +900.0%: no limit " \
        "set, not judged" in verdict.lines


def test_the_table_has_a_row_per_process_and_the_cpu_use() -> None:
    text = table(PLAN, records(), rss(), cores=2)
    assert "cxr-triage-v1 [10]" in text and "raylet [11]" in text
    # 0.5 CPU-seconds per second of the replica and 0.01 of the raylet, on 2 cores: 25.5%.
    assert {round(pct, 1) for _, pct in cpu_percent(rss(), cores=2)} == {25.5}
    assert "CPU, % of 2 cores" in text
