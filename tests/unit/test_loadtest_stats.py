"""The one percentile of the load tests and benchmarks: numpy's inverted_cdf (nearest rank)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from loadtests.report.stats import percentile

SAMPLES = st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=200)
QS = st.sampled_from([0, 1, 10, 25, 50, 75, 90, 95, 99, 99.9, 100]) | st.floats(0, 100)


@given(SAMPLES, QS)
def test_percentile_is_numpys_inverted_cdf(values: list[float], q: float) -> None:
    assert percentile(values, q) == np.percentile(values, q, method="inverted_cdf")


@given(SAMPLES, QS)
def test_percentile_is_a_measured_value(values: list[float], q: float) -> None:
    assert percentile(values, q) in values


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 99))
