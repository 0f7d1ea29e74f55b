"""Which worker group runs each Serve deployment, and how many pods each group needs.

Placement uses a Ray custom resource per group rather than relying on GPU fit alone: with an
imaging and an LLM GPU pool both able to host a fractional-GPU replica, only an explicit
resource makes the autoscaler grow the right pool. Pod bounds come from packing the
manifests' replica bounds and CPU/GPU fractions into the group's pod size, so changing a
manifest's `scaling` or `resources` changes `minReplicas`/`maxReplicas` on regeneration.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any

from serving.errors import ModelLoadError
from serving.schema.kubernetes import WorkerGroup

# Each replica takes one unit and each pod offers this many, so CPU and GPU, never the pool
# resource, limit how many replicas share a pod.
POOL_UNITS_PER_POD = 1000
# Serve's rolling update may start this percentage (rounded up to a whole replica) of extra
# replicas before stopping old ones, so a config change never drops a model to zero replicas.
MAX_SURGE_PERCENT = 25
_EPS = 1e-9


def pool_resource(group: str) -> str:
    return f"medserve-pool-{group}"


@dataclass(frozen=True)
class Demand:
    """One Serve deployment's per-replica resources and replica bounds."""

    deployment: str
    cpus: float
    gpus: float
    min_replicas: int
    max_replicas: int

    @property
    def surge(self) -> int:
        return math.ceil(self.max_replicas * MAX_SURGE_PERCENT / 100)


def demands(serve_doc: dict[str, Any]) -> list[Demand]:
    out = []
    for application in serve_doc["applications"]:
        for d in application["deployments"]:
            actor = d.get("ray_actor_options") or {}
            scaling = d.get("autoscaling_config")
            if scaling:
                lo, hi = scaling.get("min_replicas", 1), scaling["max_replicas"]
            else:
                lo = hi = d.get("num_replicas", 1)
            out.append(Demand(d["name"], float(actor.get("num_cpus", 1)),
                              float(actor.get("num_gpus", 0)), int(lo), int(hi)))
    return out


def assign(items: list[Demand], groups: list[WorkerGroup]) -> dict[str, list[Demand]]:
    """Group name -> its deployments: the first group with a matching pattern wins."""
    placed: dict[str, list[Demand]] = {g.name: [] for g in groups}
    for item in items:
        group = next((g for g in groups
                      if any(fnmatch.fnmatchcase(item.deployment, p) for p in g.deployments)),
                     None)
        if group is None:
            raise ModelLoadError(
                f"deployment {item.deployment!r} matches no worker group's `deployments`"
            )
        if item.gpus > group.gpus + _EPS or item.cpus > group.cpus + _EPS:
            raise ModelLoadError(
                f"deployment {item.deployment!r} needs {item.cpus:g} CPU / {item.gpus:g} GPU "
                f"per replica; group {group.name!r} pods have {group.cpus} CPU / {group.gpus} GPU"
            )
        placed[group.name].append(item)
    return placed


def pods_needed(replicas: list[tuple[float, float]], cpus: int, gpus: int) -> int:
    """First-fit decreasing packing of (cpu, gpu) replicas into pods of the given size."""
    free: list[list[float]] = []
    for cpu, gpu in sorted(replicas, key=lambda r: (r[1], r[0]), reverse=True):
        for pod in free:
            if pod[0] + _EPS >= cpu and pod[1] + _EPS >= gpu:
                pod[0] -= cpu
                pod[1] -= gpu
                break
        else:
            free.append([cpus - cpu, gpus - gpu])
    return len(free)


def pod_bounds(group: WorkerGroup, items: list[Demand]) -> tuple[int, int]:
    """(minReplicas, maxReplicas): pods for every minimum, and for every maximum plus surge."""
    low = [(d.cpus, d.gpus) for d in items for _ in range(d.min_replicas)]
    high = [(d.cpus, d.gpus) for d in items for _ in range(d.max_replicas + d.surge)]
    return pods_needed(low, group.cpus, group.gpus), pods_needed(high, group.cpus, group.gpus)
