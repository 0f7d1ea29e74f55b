"""Queueing maths against values computed independently (closed forms, simulation)."""

from __future__ import annotations

import math
import random

import pytest

from loadtests.capacity.queueing import (
    Arrivals,
    Station,
    erlang_c,
    fraction_within,
    md1_wait_cdf,
    mmc_mean_wait,
    mmc_wait_tail,
    simulate_batches,
    simulate_waits,
)


def erlang_c_by_sum(c: int, a: float) -> float:
    """The textbook closed form, independent of the recursion under test."""
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


@pytest.mark.parametrize(("c", "a", "known"), [(1, 0.5, 0.5), (2, 1.0, 1 / 3), (3, 2.0, 4 / 9)])
def test_erlang_c_known_values(c: int, a: float, known: float) -> None:
    assert erlang_c(c, a) == pytest.approx(known)


@pytest.mark.parametrize(("c", "a"), [(5, 4.0), (10, 8.0), (50, 45.0), (120, 100.0)])
def test_erlang_c_matches_the_closed_form(c: int, a: float) -> None:
    assert erlang_c(c, a) == pytest.approx(erlang_c_by_sum(c, a), rel=1e-9)


def test_unstable_system_always_waits() -> None:
    assert erlang_c(2, 2.0) == 1.0
    assert mmc_mean_wait(2, 2.0, 1.0) == math.inf


ARRIVALS = Arrivals.make(200_000, seed=11)


def test_simulated_mmc_matches_erlang_c() -> None:
    c, lam, mu = 3, 2.4, 1.0
    rng = random.Random(5)
    waits = simulate_waits(lam, lambda: rng.expovariate(mu), c, ARRIVALS)
    assert sum(waits) / len(waits) == pytest.approx(mmc_mean_wait(c, lam, mu), rel=0.05)
    t = 1.0
    assert 1 - fraction_within(waits, t) == pytest.approx(mmc_wait_tail(c, lam, mu, t), abs=0.01)


@pytest.mark.parametrize("rho", [0.5, 0.8, 0.9])
def test_simulated_md1_matches_pollaczek_khinchine_and_erlang(rho: float) -> None:
    d = 0.1
    lam = rho / d
    waits = simulate_waits(lam, d, 1, ARRIVALS)
    pk_mean = rho * d / (2 * (1 - rho))
    assert sum(waits) / len(waits) == pytest.approx(pk_mean, rel=0.06)
    for t in (0.05, 0.2, 0.5):
        assert fraction_within(waits, t) == pytest.approx(md1_wait_cdf(lam, d, t), abs=0.01)
    assert md1_wait_cdf(lam, d, 0.0) == pytest.approx(1 - rho)


def test_deterministic_service_waits_less_than_exponential() -> None:
    c, lam, d = 4, 3.4, 1.0
    md = simulate_waits(lam, d, c, ARRIVALS)
    assert sum(md) / len(md) < mmc_mean_wait(c, lam, 1 / d)


def test_max_rate_is_the_edge_of_the_objective() -> None:
    st = Station(service_s=0.09, slots_per_replica=1, offset_s=0.01)
    arr = Arrivals.make(50_000, seed=2)
    top = st.max_rate(1, 0.5, 0.99, arr)
    assert 0 < top < 1 / 0.09
    assert st.holds(top, 1, 0.5, 0.99, arr)
    assert not st.holds(top * 1.02, 1, 0.5, 0.99, arr)
    # More replicas hold more than proportionally (pooling).
    assert st.max_rate(3, 0.5, 0.99, arr) > 3 * top


def test_replicas_for_is_the_fewest_that_hold() -> None:
    # An LLM-like station: TTFT is the wait plus prefill, not the whole stream.
    st = Station(service_s=1.6, slots_per_replica=8, offset_s=0.2, counts_service=False)
    arr = Arrivals.make(50_000, seed=4)
    for lam in (1.0, 20.0, 150.0):
        n = st.replicas_for(lam, 1.0, 0.99, arr)
        assert n is not None and st.holds(lam, n, 1.0, 0.99, arr)
        assert n == 1 or not st.holds(lam, n - 1, 1.0, 0.99, arr)
    assert Station(1.0, 1, offset_s=2.0).replicas_for(1.0, 1.0, 0.99, arr) is None


def test_a_batch_server_of_one_is_md1_plus_its_service() -> None:
    lam, d = 7.0, 0.1
    arr = Arrivals.make(40_000, seed=5)
    sojourns = simulate_batches(lam, (d,), 1, arr)
    waits = simulate_waits(lam, d, 1, arr)
    assert len(sojourns) == len(waits)
    assert sojourns == pytest.approx([w + d for w in waits])
    for t in (0.15, 0.3, 0.6):  # and so Erlang's exact M/D/1 waiting-time distribution
        assert fraction_within(sojourns, t) == pytest.approx(md1_wait_cdf(lam, d, t - d),
                                                             abs=0.01)


def test_batches_take_every_waiting_request_and_finish_them_together() -> None:
    # Arrivals at 0.1, 0.2, ... 0.7 s, batches of up to 3 taking 1 s: the first runs alone
    # (0.1-1.1), the next batch takes the three that arrived meanwhile (1.1-2.1), then the
    # last three (2.1-3.1); each request leaves when its batch ends.
    arr = Arrivals((0.1,) * 7)
    sojourns = simulate_batches(1.0, (1.0, 1.0, 1.0), 1, arr, warmup=0.0)
    assert sojourns == pytest.approx([1.0, 1.9, 1.8, 1.7, 2.6, 2.5, 2.4])


def test_batching_lengthens_the_tail_that_md1_at_the_same_rate_misses() -> None:
    """A replica whose batch of k takes k x 0.09 s has the same saturated rate as one serving
    each request in 0.09 s, but each request waits for its whole batch."""
    d, k = 0.09, 8
    batched = Station(d, 1, 0.0, batch_s=tuple(d * i for i in range(1, k + 1)))
    single = Station(d, 1, 0.0)
    arr = Arrivals.make(50_000, seed=6)
    assert batched.per_slot_rate == pytest.approx(single.per_slot_rate)
    lam = 0.7 / d
    assert fraction_within(batched.latencies(lam, 1, arr), 0.5) < fraction_within(
        single.latencies(lam, 1, arr), 0.5)
    assert batched.max_rate(1, 0.5, 0.99, arr) < single.max_rate(1, 0.5, 0.99, arr)
