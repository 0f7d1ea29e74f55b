"""Metrics labels and buckets, the request-metrics middleware, and the generated SLO rules and
dashboard, without starting Ray (promtool is the real Prometheus rule engine)."""

from __future__ import annotations

import json
import logging
import pickle
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.requests import ClientDisconnect
from typer.testing import CliRunner

from serving.cli.main import app as cli
from serving.errors import QueueTimeout, Unavailable
from serving.http.error_map import install_error_handlers
from serving.http.request_metrics import RequestMetrics
from serving.observability import metrics
from serving.observability.dashboard import dashboard, dashboard_json, queries
from serving.observability.slo import ALERT_NAMES, BURN_ALERTS, WINDOWS, rules, rules_yaml
from serving.repository.store import load_repository
from tests.conftest import MODEL_REPO, ROOT
from tests.prom import binary

REPO = load_repository(MODEL_REPO)
MANIFESTS = [*REPO.models.values(), *REPO.llms.values()]
OBSERVABILITY = ROOT / "observability"


def test_every_slo_threshold_is_a_bucket_edge_in_the_exporters_label_format() -> None:
    from opentelemetry.exporter.prometheus import _convert_buckets  # what Ray's agent writes

    edges = metrics.latency_buckets(MANIFESTS)
    assert edges == sorted(set(edges))
    written = {le for le, _ in _convert_buckets([0] * (len(edges) + 1), edges)}
    for m in REPO.models.values():
        assert m.slo.latency_threshold_s in edges
        assert metrics.le_label(m.slo.latency_threshold_s) in written
    for llm in REPO.llms.values():
        ttft = metrics.buckets(metrics.TTFT_LADDER_S, [llm.slo.ttft_threshold_s])
        itl = metrics.buckets(metrics.ITL_LADDER_S, [llm.slo.itl_threshold_s])
        assert llm.slo.ttft_threshold_s in ttft and llm.slo.itl_threshold_s in itl
    assert metrics.buckets([1, 2], [0.3, 2]) == [0.3, 1.0, 2.0]
    with pytest.raises(ValueError):
        metrics.buckets([1.0], [0.0])


def _metric_names() -> list[str]:
    return [v for k, v in vars(metrics).items() if k.isupper() and isinstance(v, str)
            and v.startswith(metrics.PREFIX) and v != metrics.PREFIX]


def test_metric_names_follow_prometheus_conventions() -> None:
    names = _metric_names()
    assert len(names) == len(set(names)) >= 18
    for name in names:
        assert re.fullmatch(r"medserve_[a-z_]+[a-z]", name)
        if re.search("duration|latency|_wait_|time_to", name):
            assert name.endswith("_seconds"), name


def test_labels_come_from_the_repository_and_fixed_words_only() -> None:
    labels = metrics.ModelLabels.from_manifests(MANIFESTS)
    cxr = REPO.manifest("cxr-triage")
    assert labels("cxr-triage", None) == ("cxr-triage", cxr.served_version)
    assert labels("cxr-triage", "1") == ("cxr-triage", "1")
    assert labels("cxr-triage", "999") == ("cxr-triage", "unknown")
    assert labels("John Smith 1970-01-01", "1") == ("unknown", "unknown")
    assert labels(None, None) == ("none", "none")
    for llm in REPO.llms.values():  # OpenAI ids: "<model>:<adapter>"
        assert labels(f"{llm.name}:any-adapter", None) == (llm.name, llm.served_version)
    assert metrics.priority_label(" STAT") == "stat"
    assert metrics.priority_label("urgent") == "urgent"
    assert metrics.priority_label("asap!") == "routine"
    assert metrics.priority_label(None) == "routine"


def test_shed_reason_survives_the_trip_across_ray_actors() -> None:
    err = pickle.loads(pickle.dumps(Unavailable("full", retry_after_s=1, reason="at_capacity")))
    assert (err.shed_reason, err.retry_after_s, err.status_code) == ("at_capacity", 1, 503)
    assert pickle.loads(pickle.dumps(QueueTimeout("slow"))).shed_reason == "queue_timeout"


class Recorder:
    """Stands in for GatewayMetrics (whose objects need a Ray worker)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def record(self, **kwargs: Any) -> None:
        self.calls.append(kwargs)


@pytest.fixture
def recorded() -> tuple[TestClient, Recorder]:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/imaging/{model}/predict")
    async def predict(model: str, fail: str = "") -> dict[str, str]:
        if fail == "capacity":
            raise Unavailable("at capacity", retry_after_s=1, reason="at_capacity")
        if fail == "timeout":
            raise QueueTimeout("no answer")
        if fail == "bug":
            raise RuntimeError("patient Jane Doe")  # text that must go nowhere
        if fail == "gone":
            raise ClientDisconnect()  # the upload stopped: the client went away
        return {"model": model}

    recorder = Recorder()
    app.add_middleware(RequestMetrics, metrics=recorder,  # type: ignore[arg-type]
                       labels=lambda: metrics.ModelLabels.from_manifests(MANIFESTS))
    return TestClient(app, raise_server_exceptions=False), recorder


def test_middleware_records_each_response_once_with_safe_labels(recorded) -> None:
    client, recorder = recorded
    route = "/v1/imaging/{model}/predict"
    client.post("/v1/imaging/cxr-triage/predict", headers={"X-Priority": "stat"})
    client.post("/v1/imaging/cxr-triage/predict?fail=capacity")
    client.post("/v1/imaging/cxr-triage/predict?fail=timeout")
    assert client.post("/v1/imaging/cxr-triage/predict?fail=bug").status_code == 500
    client.post("/v1/imaging/jane-doe/predict")
    client.get("/jane-doe/records")
    got = [{k: v for k, v in c.items() if k != "duration_s"} for c in recorder.calls]
    base = {"model": "cxr-triage", "version": "1", "route": route, "priority": "routine"}
    assert got == [
        {**base, "status": 200, "priority": "stat", "error_type": None, "shed_reason": None},
        {**base, "status": 503, "error_type": "service_unavailable", "shed_reason": "at_capacity"},
        {**base, "status": 504, "error_type": "timeout", "shed_reason": "queue_timeout"},
        {**base, "status": 500, "error_type": "internal_error", "shed_reason": None},
        {**base, "model": "unknown", "version": "unknown", "status": 200, "error_type": None,
         "shed_reason": None},
        {"model": "none", "version": "none", "route": "unmatched", "priority": "routine",
         "status": 404, "error_type": "invalid_request_error", "shed_reason": None},
    ]
    assert all(c["duration_s"] > 0 for c in recorder.calls)


def test_rules_follow_each_manifests_slo() -> None:
    doc = rules(MANIFESTS)
    groups = {g["name"]: g["rules"] for g in doc["groups"]}
    assert set(groups) == {f"medserve-slo-{m.name}" for m in MANIFESTS}
    for m in REPO.models.values():
        rs = groups[f"medserve-slo-{m.name}"]
        slis = [r for r in rs if r.get("record", "").startswith("medserve:sli:")]
        assert sorted(r["record"] for r in slis if r["labels"]["slo"] == "latency") == sorted(
            f"medserve:sli:ratio_rate{w}" for w in WINDOWS)
        le = f'le="{metrics.le_label(m.slo.latency_threshold_s)}"'
        assert all(le in r["expr"] for r in slis if r["labels"]["slo"] == "latency")
        objectives = {r["labels"]["slo"]: r["expr"] for r in rs
                      if r.get("record") == "medserve:slo_objective:ratio"}
        assert objectives == {"latency": f"vector({m.slo.latency_objective:g})",
                              "availability": f"vector({m.slo.availability_objective:g})"}
        alerts = [r for r in rs if "alert" in r]
        assert {(a["alert"], a["labels"]["severity"]) for a in alerts} == {
            (ALERT_NAMES[s], sev) for s in ("latency", "availability") for sev, _ in BURN_ALERTS}
        for a in alerts:
            budget = 1 - (m.slo.latency_objective if a["labels"]["slo"] == "latency"
                          else m.slo.availability_objective)
            pairs = dict(BURN_ALERTS)[a["labels"]["severity"]]
            for rate, long, short in pairs:
                for w in (long, short):
                    assert f"ratio_rate{w}{{" in a["expr"] and f"({rate:g} * {budget:.6g})" in (
                        a["expr"])
            assert a["annotations"]["runbook_url"].endswith("#" + a["alert"].lower())
    for llm in REPO.llms.values():
        slos = {r["labels"]["slo"] for r in groups[f"medserve-slo-{llm.name}"] if "alert" in r}
        assert slos == {"availability", "ttft", "itl"}


@pytest.mark.promtool
def test_generated_rules_pass_promtool_check(tmp_path: Path) -> None:
    promtool = binary("promtool")
    path = tmp_path / "rules.yaml"
    path.write_text(rules_yaml(MANIFESTS))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.promtool
def test_promtool_unit_tests_prove_alerts_fire_and_stay_silent() -> None:
    promtool = binary("promtool")
    tests = sorted(str(p) for p in (ROOT / "tests" / "prometheus").glob("*.yaml"))
    assert tests
    result = subprocess.run([promtool, "test", "rules", *tests], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_committed_observability_files_match_the_generator(tmp_path: Path) -> None:
    out = tmp_path / "obs"
    result = CliRunner().invoke(cli, ["build-observability", "--out", str(out),
                                      "--repo", str(MODEL_REPO)])
    assert result.exit_code == 0, result.output
    for rel in ("prometheus/medserve-rules.yaml", "grafana/medserve-dashboard.json"):
        assert (out / rel).read_text() == (OBSERVABILITY / rel).read_text(), (
            f"observability/{rel} is stale: run `medserve build-observability`")
    assert yaml.safe_load((out / "prometheus/medserve-rules.yaml").read_text())["groups"]


def test_dashboard_uses_defined_metrics_and_a_clean_layout() -> None:
    board = json.loads(dashboard_json())
    assert board == dashboard()
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for p in panels:
        g = p["gridPos"]
        cell = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & cell, p["title"]
        cells |= cell
    defined = {metrics.exported(name) for name in _metric_names()}
    text = dashboard_json() + rules_yaml(MANIFESTS)
    used = set(re.findall(r"ray_medserve_[a-z_]+", text))
    assert {re.sub(r"_(bucket|count|sum)$", "", u) if u not in defined else u for u in used
            } <= defined
    titles = {t for t, _ in queries()}
    assert {"End-to-end latency", "SLI vs objective (1h)", "Error budget left (3d)",
            "Time to first token", "Inter-token latency", "Tokens per second"} <= titles
    latency = [q for t, q in queries() if t == "End-to-end latency"]
    assert all(q.startswith("histogram_quantile(") and "sum by (model, version, le)" in q
               for q in latency)


def test_a_client_that_goes_away_mid_upload_is_499_not_a_paging_500(
    recorded, caplog: pytest.LogCaptureFixture
) -> None:
    client, recorder = recorded
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        assert client.post("/v1/imaging/cxr-triage/predict?fail=gone").status_code == 499
    (call,) = recorder.calls
    assert (call["status"], call["error_type"]) == (499, "client_closed")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
