"""Open-loop arrivals and coordinated-omission correction, without Locust."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from loadtests.generator.openloop import (
    NOT_SENT,
    InFlight,
    arrivals,
    completed,
    refused,
    replayed,
)
from loadtests.report.stats import percentile
from loadtests.traffic.shapes import Step

SIGMAS = 5  # bounds below are this many standard deviations: deterministic seeds, no flakes


def counts(rate: float, duration: float, seeds: range) -> list[int]:
    return [sum(1 for _ in arrivals(lambda t: rate, rate, duration, random.Random(s)))
            for s in seeds]


@pytest.mark.parametrize(("rate", "duration"), [(2.0, 60.0), (20.0, 30.0), (0.2, 600.0)])
def test_poisson_counts_have_poisson_mean_and_variance(rate: float, duration: float) -> None:
    n = 200
    c = counts(rate, duration, range(n))
    expected = rate * duration
    assert abs(statistics.fmean(c) - expected) <= SIGMAS * math.sqrt(expected / n)
    # Index of dispersion (variance / mean) is 1 for Poisson; its sd is about sqrt(2 / n).
    assert abs(statistics.variance(c) / statistics.fmean(c) - 1) <= SIGMAS * math.sqrt(2 / n)


def test_gaps_are_exponential() -> None:
    rate = 5.0
    times = list(arrivals(lambda t: rate, rate, 2000.0, random.Random(7)))
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    mean = statistics.fmean(gaps)
    assert abs(mean - 1 / rate) <= SIGMAS * (1 / rate) / math.sqrt(len(gaps))
    # P(gap > mean) = 1/e for an exponential distribution.
    p, q = sum(1 for g in gaps if g > 1 / rate) / len(gaps), math.exp(-1)
    assert abs(p - q) <= SIGMAS * math.sqrt(q * (1 - q) / len(gaps))


def test_time_varying_rate_follows_the_shape() -> None:
    base, duration = 10.0, 500.0
    shape = Step(duration, steps=5, start=0.2)
    times = list(arrivals(lambda t: base * shape.multiplier(t), base, duration, random.Random(3)))
    stair = duration / 5
    for k in range(5):
        expected = base * shape.multiplier(k * stair) * stair
        got = sum(1 for t in times if k * stair <= t < (k + 1) * stair)
        assert abs(got - expected) <= SIGMAS * math.sqrt(expected)


def test_rate_above_the_bound_is_an_error() -> None:
    with pytest.raises(ValueError, match="exceeds rate_max"):
        list(arrivals(lambda t: 2.0, 1.0, 100.0, random.Random(0)))
    assert list(arrivals(lambda t: 0.0, 0.0, 100.0, random.Random(0))) == []


def test_a_replayed_schedule_repeats_one_period_to_the_end() -> None:
    first = list(arrivals(lambda t: 3.0, 3.0, 30.0, random.Random(5)))
    got = list(replayed(first, 30.0, 100.0))
    passes = [[t - k * 30.0 for kk, t in got if kk == k] for k in range(4)]
    for k in range(3):
        assert passes[k] == pytest.approx(first)  # each full pass: the same offsets
    assert passes[3] == pytest.approx([t for t in first if t < 10.0])  # cut at the end
    assert max(t for _, t in got) < 100.0
    assert list(replayed([], 30.0, 100.0)) == []  # a period with no arrival: none, and ends
    # One period as long as the run is the plain schedule.
    assert [t for _, t in replayed(first, 30.0, 30.0)] == first


def test_in_flight_cap_refuses_and_counts() -> None:
    gate = InFlight(cap=3)
    assert [gate.try_acquire() for _ in range(5)] == [True, True, True, False, False]
    assert gate.refused == 2
    gate.release()
    assert gate.try_acquire()


def test_latency_counts_from_the_intended_start_and_refusals_fail() -> None:
    r = completed("m", intended_s=10.0, done_s=12.5, status=200)
    assert r.ok and r.latency_s == pytest.approx(2.5)
    assert not completed("m", 1.0, 1.1, 503).ok
    assert not completed("m", 1.0, 1.1, 200, error="ReadTimeout").ok
    x = refused("m", 3.0)
    assert not x.ok and x.latency_s is None and x.error == NOT_SENT


def fifo_server(starts: list[float], service_s: float, stall: tuple[float, float]) -> list[float]:
    """Completion times of requests sent at `starts` (sorted) to one FIFO server that stops
    during `stall` = (begin, end)."""
    free, done = 0.0, []
    for t in starts:
        begin = max(t, free)
        if stall[0] <= begin < stall[1]:
            begin = stall[1]
        free = begin + service_s
        done.append(free)
    return done


def test_a_stall_shows_in_the_open_loop_tail_and_hides_from_a_closed_loop() -> None:
    rate, duration, service, stall_s = 10.0, 60.0, 0.01, 3.0
    stall = (30.0, 30.0 + stall_s)
    # Open loop: the schedule is fixed; latency is completion - intended start.
    sent = list(arrivals(lambda t: rate, rate, duration, random.Random(1)))
    done = fifo_server(sent, service, stall)
    open_lat = [completed("m", s, d, 200).latency_s or 0.0 for s, d in zip(sent, done, strict=True)]
    # Closed loop, one user: the next request leaves when the last one returns.
    closed_lat, t = [], 0.0
    while t < duration:
        (end,) = fifo_server([t], service, stall)
        closed_lat.append(end - t)
        t = end
    # About rate * stall_s requests arrive during the stall: over 1% of all of them, and the
    # earliest of those wait nearly the whole stall.
    assert percentile(open_lat, 99) >= stall_s / 2
    # The closed loop sent one request into the stall: it is in the sample, but not the tail.
    assert max(closed_lat) >= stall_s * 0.9
    assert percentile(closed_lat, 99) <= 2 * service
