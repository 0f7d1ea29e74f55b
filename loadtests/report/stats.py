"""The one percentile of the load tests and benchmarks.

Nearest rank, which is numpy's `np.percentile(values, q, method="inverted_cdf")`: the smallest
measured value with at least q% of the samples at or below it, so every figure reported is a
latency that was actually measured (no interpolation between two requests).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (q in 0..100) of `values` by nearest rank; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]
