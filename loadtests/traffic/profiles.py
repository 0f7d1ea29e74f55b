"""Load-test profiles: which models, at what base rate, in which shape, for how long.

A profile is a YAML file in loadtests/profiles/ (or any path). Base rates are set per model,
or taken from a rollout's peak traffic times the `share` of it that the deployment under test
serves. `slo_overrides` replaces manifest targets: only the CI smoke profile uses it, and the
report prints the override next to every verdict it affected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from loadtests.traffic.rollout import Diurnal, Rollout, load_rollout
from loadtests.traffic.shapes import ShapeSpec

PACKAGE = Path(__file__).resolve().parents[1]  # loadtests/, which holds the data folders
PROFILES = PACKAGE / "profiles"
ROLLOUTS = PACKAGE / "rollouts"
Kind = Literal["radiograph", "ct", "chat"]
PRIORITIES = ("stat", "urgent", "routine")  # the x-priority values Medserve knows


def kind_of(manifest: Any) -> Kind:
    """Workload kind from a manifest (duck-typed: LLM manifests have `adapters`)."""
    if hasattr(manifest, "adapters"):
        return "chat"
    return "ct" if getattr(manifest, "task", "") == "detection" else "radiograph"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelLoad(_Strict):
    rate_rps: float | None = Field(None, gt=0, description="Base arrival rate (requests/s).")


class Payloads(_Strict):
    radiograph_px: int = Field(512, ge=64, description="Radiograph rows and columns.")
    ct_slices: int = Field(24, ge=3, description="Instances per CT series.")
    ct_px: int = Field(64, ge=16, description="CT slice rows and columns.")
    chat_max_tokens: int = Field(32, ge=1, description="max_tokens of each chat turn.")
    chat_max_history: int = Field(3, ge=0, description="Most earlier turns sent with a turn.")


class Tenant(_Strict):
    name: str = Field(description="Tenant label of its requests in the records (a site).")
    weight: float = Field(1.0, gt=0, description="Relative share of requests.")
    key_env: str | None = Field(
        None,
        description="Environment variable holding this tenant's API key, sent as "
        "`Authorization: Bearer` (`medserve tenants add`); default: $MEDSERVE_API_KEY if set, "
        "else no key (a server without auth). Keys never enter the plan or the reports.",
    )


class Profile(_Strict):
    name: str
    description: str = ""
    duration_s: float = Field(gt=0, description="Length of the arrival schedule.")
    shape: ShapeSpec = Field(default_factory=ShapeSpec)
    rollout: str | None = Field(None, description="Rollout file (name in rollouts/ or path).")
    share: float = Field(1.0, gt=0, description="Fraction of the rollout's peak sent.")
    models: dict[str, ModelLoad] = Field(min_length=1)
    slo_overrides: dict[str, dict[str, float]] = Field(default_factory=dict)
    max_in_flight: int = Field(64, ge=1, description="Open-loop in-flight cap per model.")
    request_timeout_s: float = Field(30.0, gt=0, description="Client timeout; then a failure.")
    seed: int = 0
    repeat_s: float | None = Field(
        None,
        gt=0,
        description="Replay the first repeat_s seconds of each model's schedule (arrival "
        "times, payloads, tenants, priorities) until the end, for constant shapes only. A soak "
        "sets its drift window here: every window it compares is then sent the same requests "
        "at the same offsets, so a tail that moves is the server's, not the luck of the draw.",
    )
    payloads: Payloads = Field(default_factory=Payloads)
    tenants: list[Tenant] = Field(default_factory=lambda: [Tenant(name="loadtest")])
    priorities: dict[str, float] = Field(
        default_factory=lambda: {"routine": 1.0}, description="Mix of x-priority values."
    )

    @model_validator(mode="after")
    def _rates(self) -> Profile:
        unknown = set(self.priorities) - set(PRIORITIES)
        if unknown:
            raise ValueError(f"unknown priorities {sorted(unknown)}; known: {PRIORITIES}")
        if self.rollout is None and any(m.rate_rps is None for m in self.models.values()):
            raise ValueError("without a rollout every model needs rate_rps")
        if self.repeat_s is not None and self.shape.kind not in ("constant", "soak"):
            raise ValueError(f"repeat_s replays a constant load; shape {self.shape.kind!r} "
                             "changes its rate over the run")
        return self

    def load_rollout(self) -> Rollout | None:
        if self.rollout is None:
            return None
        path = Path(self.rollout)
        return load_rollout(path if path.suffix else ROLLOUTS / f"{self.rollout}.yaml")

    def base_rates(self) -> dict[str, float]:
        """Each model's base rate: its own, or its share of the rollout's planning peak."""
        rollout = self.load_rollout()
        rates = {}
        for model, load in self.models.items():
            if load.rate_rps is not None:
                rates[model] = load.rate_rps
            else:
                assert rollout is not None
                rates[model] = rollout.peak_rps(model) * self.share
        return rates


def load_profile(name_or_path: str) -> Profile:
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES.glob("*.yaml")))
        raise FileNotFoundError(f"no load-test profile {name_or_path!r} (known: {known})")
    raw: Any = yaml.safe_load(path.read_text())
    return Profile.model_validate(raw)


class ModelPlan(_Strict):
    kind: Kind
    rate_rps: float = Field(gt=0)
    adapters: list[str] = Field(default_factory=list, description="LLM adapters to spread over.")


class Plan(_Strict):
    """What the Locust process runs: written by the gate (loadtests.run.gate), read by the
    locustfile (loadtests.generator.locustfile)."""

    profile: Profile
    models: dict[str, ModelPlan]
    records: str = Field(description="Where the Locust process writes per-request records.")
    diurnal: Diurnal | None = None

    @property
    def drain_s(self) -> float:
        """How long in-flight requests may finish after the last arrival."""
        return self.profile.request_timeout_s + 5.0


def all_manifests(repo: Any) -> dict[str, Any]:
    """Every model of a repository by name: imaging manifests and, where the repository has
    them, LLM manifests (kept apart by the loader)."""
    return {**repo.models, **getattr(repo, "llms", {})}


def build_plan(
    profile: Profile, repo: Any, records: str, duration_s: float | None = None
) -> tuple[Plan, list[str]]:
    """The plan for the models of `profile` that `repo` serves, and notes on those skipped."""
    if duration_s is not None:
        # A replay period keeps its share of the run, as the soak's windows do (SoakPlan).
        repeat = profile.repeat_s and profile.repeat_s * duration_s / profile.duration_s
        profile = profile.model_copy(update={"duration_s": duration_s, "repeat_s": repeat})
    rates = profile.base_rates()
    manifests = all_manifests(repo)
    models, notes = {}, []
    for name, rate in rates.items():
        manifest = manifests.get(name)
        if manifest is None:
            notes.append(f"{name}: not in the model repository, not driven")
            continue
        adapters = [a.name for a in getattr(manifest, "adapters", [])]
        models[name] = ModelPlan(kind=kind_of(manifest), rate_rps=rate, adapters=adapters)
    if not models:
        raise ValueError(f"profile {profile.name!r} drives no model of the repository")
    rollout = profile.load_rollout()
    return Plan(profile=profile, models=models, records=records,
                diurnal=rollout.diurnal if rollout else None), notes
