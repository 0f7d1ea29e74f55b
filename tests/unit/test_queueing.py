"""Queueing maths against values computed independently (closed forms, simulation)."""

from __future__ import annotations

import math
import random

import pytest

from loadtests.queueing import (
    Arrivals,
    Station,
    erlang_c,
    fraction_within,
    md1_wait_cdf,
    mmc_mean_wait,
    mmc_wait_tail,
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
    st = Station(service_s=1.6, slots_per_replica=8, offset_s=0.2)
    arr = Arrivals.make(50_000, seed=4)
    for lam in (1.0, 20.0, 150.0):
        n = st.replicas_for(lam, 1.0, 0.99, arr)
        assert n is not None and st.holds(lam, n, 1.0, 0.99, arr)
        assert n == 1 or not st.holds(lam, n - 1, 1.0, 0.99, arr)
    assert Station(1.0, 1, offset_s=2.0).replicas_for(1.0, 1.0, 0.99, arr) is None
