"""Capacity planner: fits, replica counts, GPUs, cost and the autoscaling overlay."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from loadtests.capacity import report as capacity_report
from loadtests.capacity.planner import HOURS_PER_MONTH, fit, make_plan
from loadtests.capacity.profiler import Level, ModelProfile, load, save
from loadtests.capacity.queueing import Arrivals
from loadtests.traffic.rollout import load_rollout
from serving.repository.store import load_manifest
from serving.schema.base import Scaling

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "model_repo"
ARRIVALS = Arrivals.make(40_000, seed=3)

CXR = ModelProfile("cxr-triage", "radiograph", [
    Level(1, 9.0, 0.11, 0.1, 0.15, 0), Level(4, 10.5, 0.38, 0.37, 0.5, 0),
    Level(16, 11.0, 1.45, 1.4, 1.9, 0)])
LLM = ModelProfile("clinical-llm", "chat", [
    Level(1, 1.0, 1.0, 1.0, 1.2, 0, 0.1, 0.05), Level(8, 5.0, 1.6, 1.6, 2.0, 0, 0.2, 0.2),
    Level(16, 6.0, 2.6, 2.6, 3.0, 0, 0.4, 0.4)])


class LLMSLO(SimpleNamespace):
    def model_dump(self) -> dict[str, float]:
        return dict(self.__dict__)


LLM_MANIFEST = SimpleNamespace(
    slo=LLMSLO(ttft_threshold_s=1.0, ttft_objective=0.99, itl_threshold_s=0.25,
               itl_objective=0.99, availability_objective=0.999),
    resources=SimpleNamespace(gpus=1.0))


def manifests() -> dict[str, object]:
    return {"cxr-triage": load_manifest(REPO / "cxr-triage" / "manifest.yaml"),
            "clinical-llm": LLM_MANIFEST}


def test_batching_imaging_fit_takes_batch_times_from_the_concurrency_sweep() -> None:
    manifest = manifests()["cxr-triage"]
    f = fit(CXR, manifest)
    batches = f.station.batch_s
    assert len(batches) == manifest.batching.max_batch_size  # type: ignore[attr-defined]
    # p50 at concurrency 1, 4 and 16; linear in between and past the last level.
    assert batches[0] == 0.1 and batches[3] == 0.37
    assert batches[1] == pytest.approx(0.1 + (0.37 - 0.1) / 3)
    assert batches[7] == pytest.approx(0.37 + (1.4 - 0.37) * 4 / 12)
    assert f.station.per_slot_rate == pytest.approx(max(k / t for k, t in enumerate(batches, 1)))
    assert f.station.slots_per_replica == 1 and f.target.metric == "latency"


def test_one_at_a_time_imaging_fit_is_saturated_service_plus_unloaded_offset() -> None:
    f = fit(CXR, manifests()["cxr-triage"], max_batch=1)
    assert f.station.service_s == pytest.approx(1 / 11.0)
    assert f.station.offset_s == pytest.approx(0.1 - 1 / 11.0)
    assert f.station.counts_service and not f.station.batch_s


def test_llm_fit_takes_the_most_streams_within_the_itl_threshold() -> None:
    f = fit(LLM, LLM_MANIFEST)
    assert f.station.slots_per_replica == 8  # ITL p99 0.2 s <= 0.25 s; 16 streams is 0.4 s
    assert f.station.service_s == 1.6 and f.station.offset_s == 0.2
    assert f.target.metric == "ttft" and not f.station.counts_service


def test_plan_sizes_each_model_to_the_fewest_replicas_that_hold_the_peak() -> None:
    rollout = load_rollout(ROOT / "loadtests" / "rollouts" / "national.yaml")
    plan = make_plan(rollout, [CXR, LLM], manifests(), ARRIVALS)
    assert [m.model for m in plan.models] == ["cxr-triage", "clinical-llm"]
    for m in plan.models:
        st, t = m.fit.station, m.fit.target
        assert m.plan_rps == pytest.approx(rollout.peak_rps(m.model)
                                           * (1 + rollout.capacity.headroom))
        assert m.replicas is not None
        assert st.holds(m.plan_rps, m.replicas, t.threshold_s, t.objective, ARRIVALS)
        assert not st.holds(m.plan_rps, m.replicas - 1, t.threshold_s, t.objective, ARRIVALS)
        assert 1 <= m.min_replicas <= m.replicas
    cxr_gpus = manifests()["cxr-triage"].resources.gpus  # type: ignore[attr-defined]
    assert plan.models[0].gpus == pytest.approx(plan.models[0].replicas * cxr_gpus)
    assert plan.gpus == math.ceil(sum(m.gpus for m in plan.models))
    assert plan.cost_per_month == pytest.approx(
        plan.gpus * rollout.capacity.gpu_hour_cost * HOURS_PER_MONTH)


def test_overlay_is_valid_manifest_scaling(tmp_path: Path) -> None:
    rollout = load_rollout(ROOT / "loadtests" / "rollouts" / "pilot.yaml")
    plan = make_plan(rollout, [CXR, LLM], manifests(), ARRIVALS)
    path = tmp_path / "overlay.yaml"
    capacity_report.write_overlay(path, plan, "medserve capacity --rollout pilot.yaml")
    doc = yaml.safe_load(path.read_text())
    assert doc["rollout"] == rollout.name
    for m in plan.models:
        scaling = Scaling.model_validate(doc["models"][m.model]["scaling"])
        assert (scaling.min_replicas, scaling.max_replicas) == (m.min_replicas, m.replicas)


def test_profiles_round_trip_and_the_plot_renders(tmp_path: Path) -> None:
    save(tmp_path / "profile.json", [CXR, LLM], "test machine")
    profiles, machine = load(tmp_path / "profile.json")
    assert profiles == [CXR, LLM] and machine == "test machine"
    rollout = load_rollout(ROOT / "loadtests" / "rollouts" / "pilot.yaml")
    plan = make_plan(rollout, profiles, manifests(), ARRIVALS)
    capacity_report.plot(tmp_path / "capacity.png", plan, profiles)
    assert (tmp_path / "capacity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
