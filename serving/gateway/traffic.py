"""Canary traffic splits: which version an unpinned request goes to.

The split lives in each manifest's `traffic` (next to `versions` and `default_version`, where
a platform engineer adds the version being canaried). It reaches the gateway in its Serve
`user_config` (serving.topology.applications.Routing), never as an init argument or a model
deployment option, so a split change (a canary step, a rollback) is a Serve in-place update:
`reconfigure` on the live gateway replicas, no replica restarted, no request dropped.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence


def pick(split: Mapping[str, int], rng: random.Random) -> str:
    """One version, chosen with probability proportional to its weight."""
    labels: Sequence[str] = list(split)
    return rng.choices(labels, weights=[split[label] for label in labels])[0]
