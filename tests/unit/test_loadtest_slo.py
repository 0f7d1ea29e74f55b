"""SLO targets come from the manifests; verdicts follow from the records."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from loadtests.generator.openloop import NOT_SENT, Record
from loadtests.report.slo import evaluate, slo_of
from loadtests.report.stats import percentile
from serving.repository.store import load_manifest

REPO = Path(__file__).resolve().parents[2] / "model_repo"


class ChatSLO(BaseModel):
    """The shape of an LLM manifest's slo block (TTFT and inter-token targets)."""

    ttft_threshold_s: float = 1.0
    ttft_objective: float = 0.99
    itl_threshold_s: float = 0.25
    itl_objective: float = 0.95
    availability_objective: float = 0.999


class ChatManifest(BaseModel):
    slo: ChatSLO = ChatSLO()


def test_imaging_targets_are_the_manifests() -> None:
    for name in ("cxr-triage", "lung-nodule-ct"):
        manifest = load_manifest(REPO / name / "manifest.yaml")
        slo = slo_of(name, manifest)
        (target,) = slo.targets
        assert (target.metric, target.threshold_s, target.objective) == (
            "latency", manifest.slo.latency_threshold_s, manifest.slo.latency_objective)
        assert slo.availability == manifest.slo.availability_objective
        assert slo.error_budget == pytest.approx(1 - manifest.slo.availability_objective)
        assert slo.source == "manifest"


def test_llm_has_ttft_and_itl_targets() -> None:
    slo = slo_of("llm", ChatManifest())
    assert [(t.metric, t.threshold_s, t.objective) for t in slo.targets] == [
        ("ttft", 1.0, 0.99), ("itl", 0.25, 0.95)]


def test_overrides_replace_and_are_reported_and_typos_fail() -> None:
    manifest = load_manifest(REPO / "cxr-triage" / "manifest.yaml")
    slo = slo_of("cxr-triage", manifest, {"latency_threshold_s": 3.0})
    assert slo.targets[0].threshold_s == 3.0
    assert slo.targets[0].objective == manifest.slo.latency_objective
    assert "override" in slo.source and "latency_threshold_s=3" in slo.source
    with pytest.raises(ValueError, match="unknown SLO fields"):
        slo_of("cxr-triage", manifest, {"latency_treshold_s": 3.0})


def test_nearest_rank_percentiles_are_measured_values() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, q) for q in (50, 90, 99, 99.9, 100)] == [50, 90, 99, 100, 100]
    assert percentile([], 50) != percentile([], 50)  # NaN


def ok(latency: float, t: float = 0.0) -> Record:
    return Record("m", t, latency, True, 200)


def test_fraction_under_threshold_decides_the_latency_objective() -> None:
    slo = slo_of("cxr-triage", load_manifest(REPO / "cxr-triage" / "manifest.yaml"))
    threshold = slo.targets[0].threshold_s
    objective = slo.targets[0].objective
    n = 1000
    slow = round(n * (1 - objective))  # exactly at the objective: passes
    records = [ok(threshold / 2)] * (n - slow) + [ok(threshold * 2)] * slow
    result = evaluate(slo, records, duration_s=100.0)
    assert result.metrics[0].under == pytest.approx(objective)
    assert result.passed and result.throughput == pytest.approx(n / 100)
    worse = evaluate(slo, [*records[1:], ok(threshold * 2)], duration_s=100.0)
    assert not worse.passed and "latency" in worse.failures()[0]


def test_error_budget_counts_failures_and_unsent_requests() -> None:
    manifest = load_manifest(REPO / "cxr-triage" / "manifest.yaml")
    slo = slo_of("cxr-triage", manifest)
    budget = slo.error_budget
    n = 10_000
    allowed = int(n * budget)
    fails = [Record("m", 0.0, None, False, 0, NOT_SENT)] * allowed
    good = [ok(0.01)] * (n - allowed)
    assert evaluate(slo, good + fails, 10.0).within_budget
    over = evaluate(slo, [*good[1:], *fails, Record("m", 0.0, 0.01, False, 503)], 10.0)
    assert not over.within_budget and not over.passed
    assert over.not_sent == allowed and over.errors == {NOT_SENT: allowed, "HTTP 503": 1}


def test_itl_samples_are_every_gap_of_every_stream() -> None:
    slo = slo_of("llm", ChatManifest())
    streams = [Record("llm", 0.0, 2.0, True, 200, ttft_s=0.2, itl_s=[0.05] * 19 + [0.5])] * 10
    result = evaluate(slo, streams, 10.0)
    ttft, itl = result.metrics
    assert ttft.samples == 10 and ttft.under == 1.0
    assert itl.samples == 200 and itl.under == pytest.approx(0.95) and itl.met


def test_no_requests_is_a_failure() -> None:
    result = evaluate(slo_of("llm", ChatManifest()), [], 10.0)
    assert not result.passed and result.failures() == ["no requests were measured"]
