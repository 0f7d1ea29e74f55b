"""Metrics, SLO rules and dashboard queries through a real Prometheus scraping a real Medserve.

Prometheus (Debian's package) scrapes the session server's Ray metrics export port every
second and evaluates the rules `medserve build-observability` generates. This test sends its
traffic with `X-Priority: urgent` to the version-pinned routes, a combination other tests do
not use, and counts it from a baseline taken before; the other checks are invariants that
must hold whatever traffic other tests sent.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import yaml

from serving.net import free_port
from serving.observability.dashboard import queries
from serving.observability.metrics import le_label
from serving.observability.slo import INFERENCE_ROUTES, rules_yaml
from serving.repository.store import load_repository
from serving.testing.samples import make_ct_series, make_radiograph, zip_series
from tests.conftest import MODEL_REPO, Server
from tests.prom import binary, ensure, eventually

pytestmark = pytest.mark.promtool  # a real Prometheus server from the same Debian package

URGENT = {"X-Priority": "urgent"}
CXR, CT = "cxr-triage", "lung-nodule-ct"
PREDICT = "/v1/imaging/{model}/versions/{version}/predict"
INFER = "/v2/models/{model}/versions/{version}/infer"
URGENT_BY_ROUTE = 'sum by (model, route, status) (ray_medserve_requests_total{priority="urgent"})'
INFER_ROUTES = f'route=~"{INFERENCE_ROUTES}"'


@dataclass
class Prometheus:
    url: str

    def query(self, promql: str) -> list[dict]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        assert r.status_code == 200, (promql, r.text)
        body = r.json()
        assert body["status"] == "success", (promql, body)
        return body["data"]["result"]

    def values(self, promql: str, by: str) -> dict[str, float]:
        return {s["metric"].get(by, ""): float(s["value"][1]) for s in self.query(promql)}

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        assert len(result) <= 1, (promql, result)
        return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def prometheus(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    exe = binary("prometheus")
    assert server.metrics_port is not None
    tmp = tmp_path_factory.mktemp("prometheus")
    repo = load_repository(MODEL_REPO)
    rules = tmp / "rules.yaml"
    rules.write_text(rules_yaml([*repo.models.values(), *repo.llms.values()]))
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "medserve", "static_configs": [
            {"targets": [f"127.0.0.1:{server.metrics_port}"]}]}],
    }))
    port = free_port()
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [exe, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    prom = Prometheus(f"http://127.0.0.1:{port}")
    try:
        def ready() -> None:
            assert proc.poll() is None, f"prometheus exited; see {tmp / 'prometheus.log'}"
            with contextlib.suppress(httpx.HTTPError):
                assert httpx.get(f"{prom.url}/-/ready", timeout=2).status_code == 200
                return
            raise AssertionError("prometheus not ready")

        eventually(ready, timeout_s=60)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _post(server: Server, path: str, **kwargs) -> tuple[int, float]:
    start = time.perf_counter()
    r = httpx.post(server.url + path, timeout=120, **kwargs)
    return r.status_code, time.perf_counter() - start


def urgent_counts(prom: Prometheus) -> dict[str, float]:
    """Urgent requests on this test's routes, keyed "model route status"."""
    return {f'{s["metric"]["model"]} {s["metric"]["route"]} {s["metric"]["status"]}':
            float(s["value"][1]) for s in prom.query(URGENT_BY_ROUTE)
            if s["metric"]["route"] in (PREDICT, INFER)}


def urgent_histogram(prom: Prometheus, le: str) -> dict[str, float | None]:
    sel = f'model="{CXR}",priority="urgent",status_class="2xx",route=~".*/versions/.*"'
    metric = "ray_medserve_request_duration_seconds"
    return {"count": prom.scalar(f"sum({metric}_count{{{sel}}})"),
            le: prom.scalar(f'sum({metric}_bucket{{{sel},le="{le}"}})'),
            "+Inf": prom.scalar(f'sum({metric}_bucket{{{sel},le="+Inf"}})')}


LLM = "clinical-llm"
ADAPTER = "lung-oncology"
LLM_SERIES = ("generation_tokens_total", "prompt_tokens_total",
              "time_to_first_token_seconds_count", "request_duration_seconds_count")
ADMITTED_URGENT = 'sum(ray_medserve_admission_wait_seconds_count{priority="urgent"})'


def llm_counts(prom: Prometheus) -> dict[str, float]:
    """The LLM's counters, keyed "series adapter" (adapter `none`: the base model)."""
    return {f"{series} {s['metric']['adapter']}": float(s["value"][1]) for series in LLM_SERIES
            for s in prom.query(f'sum by (adapter) (ray_medserve_llm_{series}{{model="{LLM}"}})')}


@dataclass
class Traffic:
    before: dict[str, float]  # urgent_counts() before this traffic
    before_histogram: dict[str, float | None]
    before_llm: dict[str, float]
    before_admitted: float
    cxr_predict: list[float]  # client-side seconds of each successful request
    cxr_infer: list[float]
    ct_predict: list[float]
    unsupported: int
    unknown: int
    chat_usage: list[tuple[str, int, int]]  # (adapter label, prompt, completion tokens)


@pytest.fixture(scope="module")
def traffic(server: Server, prometheus: Prometheus) -> Traffic:
    """Two rounds of urgent traffic: the first creates the series, so that the second is an
    increase Prometheus sees (a series' first sample already holds what came before it)."""
    eventually(lambda: ensure(prometheus.scalar('up{job="medserve"}') == 1.0))
    threshold = le_label(load_repository(MODEL_REPO).manifest(CXR).slo.latency_threshold_s)
    t = Traffic(urgent_counts(prometheus), urgent_histogram(prometheus, threshold),
                llm_counts(prometheus), prometheus.scalar(ADMITTED_URGENT) or 0.0,
                [], [], [], 0, 0, [])
    dcm = make_radiograph(seed=5)
    tensor = {"inputs": [{"name": "image", "shape": [1, 1, 224, 224], "datatype": "FP32",
                          "data": [0.0] * (224 * 224)}]}
    ct = zip_series(make_ct_series())

    def send(n_predict: int) -> None:
        for _ in range(n_predict):
            status, s = _post(server, f"/v1/imaging/{CXR}/versions/1/predict", content=dcm,
                              headers={**URGENT, "Content-Type": "application/dicom"})
            assert status == 200
            t.cxr_predict.append(s)
        status, s = _post(server, f"/v2/models/{CXR}/versions/1/infer", json=tensor,
                          headers=URGENT)
        assert status == 200
        t.cxr_infer.append(s)
        status, s = _post(server, f"/v1/imaging/{CT}/versions/1/predict", content=ct,
                          headers={**URGENT, "Content-Type": "application/zip"})
        assert status == 200
        t.ct_predict.append(s)
        status, _ = _post(server, f"/v1/imaging/{CXR}/versions/1/predict", content=b"GIF89a",
                          headers={**URGENT, "Content-Type": "image/gif"})
        assert status == 415
        t.unsupported += 1
        # A client-chosen name (think: a patient's) must never become a label value.
        status, _ = _post(server, "/v1/imaging/jane-doe-1970/versions/1/predict", content=dcm,
                          headers={**URGENT, "Content-Type": "application/dicom"})
        assert status == 404
        t.unknown += 1

    def chat(model: str, stream: bool) -> None:
        body = {"model": model, "max_tokens": 6, "temperature": 0, "stream": stream,
                "messages": [{"role": "user", "content": "Follow-up for a 6 mm nodule?"}]}
        if stream:
            body["stream_options"] = {"include_usage": True}
        r = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=URGENT,
                       timeout=120)
        assert r.status_code == 200, r.text
        usage = (r.json() if not stream else json.loads(
            [x for x in r.text.splitlines() if x.startswith("data: {")][-1][6:]))["usage"]
        label = model.partition(":")[2] or "none"
        t.chat_usage.append((label, usage["prompt_tokens"], usage["completion_tokens"]))

    send(1)
    key = f"{CT} {PREDICT} 200"
    eventually(lambda: ensure(urgent_counts(prometheus).get(key) == t.before.get(key, 0) + 1))
    send(4)
    for model, stream in ((LLM, False), (LLM, True), (f"{LLM}:{ADAPTER}", False),
                          (f"{LLM}:{ADAPTER}", True)):
        chat(model, stream)
    return t


def test_request_counters_hold_exactly_the_urgent_traffic(prometheus, traffic) -> None:
    sent = {
        f"{CXR} {PREDICT} 200": len(traffic.cxr_predict),
        f"{CXR} {INFER} 200": len(traffic.cxr_infer),
        f"{CT} {PREDICT} 200": len(traffic.ct_predict),
        f"{CXR} {PREDICT} 415": traffic.unsupported,
        f"unknown {PREDICT} 404": traffic.unknown,
    }
    expected = {k: traffic.before.get(k, 0) + sent.get(k, 0) for k in {*sent, *traffic.before}}
    eventually(lambda: ensure(urgent_counts(prometheus) == expected))
    # Every request for a model not in the repository is a not_found error, whoever sent it
    # (the admin routes excepted: they refuse a non-admin before looking at the model).
    unknown = 'model="unknown",route!~"/v2/repository/.*"'
    eventually(lambda: ensure(
        prometheus.values(f"sum by (type) (ray_medserve_errors_total{{{unknown}}})", "type")
        == {"not_found_error": prometheus.scalar(
            f"sum(ray_medserve_requests_total{{{unknown}}})")},
        prometheus.query(f"sum by (route, status) (ray_medserve_requests_total{{{unknown}}})")))
    # Label values come from the repository (or are fixed words), never from the client.
    repo = load_repository(MODEL_REPO)
    allowed = {*repo.models, *repo.llms, "unknown", "none"}
    for series in prometheus.query('{__name__=~"ray_medserve_.*"}'):
        labels = series["metric"]
        assert labels.get("model", "none") in allowed, labels
        assert not any("jane" in value for value in labels.values()), labels


def test_latency_histogram_buckets_match_client_timings(prometheus, traffic) -> None:
    threshold = load_repository(MODEL_REPO).manifest(CXR).slo.latency_threshold_s
    le = le_label(threshold)
    before = {k: v or 0.0 for k, v in traffic.before_histogram.items()}
    n = len(traffic.cxr_predict) + len(traffic.cxr_infer)
    eventually(lambda: ensure(urgent_histogram(prometheus, le)["count"] == before["count"] + n))
    after = urgent_histogram(prometheus, le)
    # The server's time is inside the client's: a request the client saw under the threshold
    # is in the threshold's bucket, and that bucket exists (the SLO edge is a bucket edge).
    fast = sum(s < threshold for s in traffic.cxr_predict + traffic.cxr_infer)
    under = after[le]
    assert under is not None
    assert fast <= under - before[le] <= n
    assert after["+Inf"] == before["+Inf"] + n


def test_model_deployment_metrics_agree_with_the_gateway(prometheus, traffic) -> None:
    """Across deployments and all the session's traffic: each successful predict (over HTTP,
    or by a study job) was preprocessed once, each successful inference request waited in the
    queue once, and each batch ran one forward pass. A request the client abandoned (499) or
    that failed with a 5xx may or may not have reached the model, so those widen the bounds,
    as do a job's refused predictions; without them they are equalities."""
    def count(promql: str) -> float:
        return prometheus.scalar(promql) or 0.0

    for model in (CXR, CT):
        answered = f'ray_medserve_requests_total{{model="{model}"'

        def agree(model: str = model, answered: str = answered) -> None:
            m = f'{{model="{model}"}}'
            jobs = f'ray_medserve_job_predictions_total{{model="{model}"'
            job_ok = count(f'sum({jobs},status="200"}})')
            job_other = count(f'sum({jobs},status!="200"}})')
            for routes, stage in (('route=~".*/predict"', "preprocess_duration_seconds"),
                                  (INFER_ROUTES, "queue_wait_seconds")):
                ok = count(f'sum({answered},{routes},status="200"}})') + job_ok
                unfinished = count(f'sum({answered},{routes},status=~"499|5.."}})') + job_other
                seen = count(f"sum(ray_medserve_{stage}_count{m})")
                assert ok <= seen <= ok + unfinished, (stage, ok, seen, unfinished)
            batches = count(f"sum(ray_medserve_batch_size_count{m})")
            assert count(f"sum(ray_medserve_inference_duration_seconds_count{m})") == batches
            assert 1 <= batches <= count(f"sum(ray_medserve_queue_wait_seconds_count{m})")

        eventually(agree)
    # lung-nodule-ct batches one study at a time (max_batch_size 1).
    assert prometheus.scalar(f'sum(ray_medserve_batch_size_bucket{{model="{CT}",le="1.0"}})'
                             ) == prometheus.scalar(
                                 f'sum(ray_medserve_batch_size_count{{model="{CT}"}})')
    ready = prometheus.values("sum by (model) (ray_medserve_replica_ready)", "model")
    assert ready.get(CXR, 0) >= 1 and ready.get(CT, 0) >= 1


def test_recording_rules_and_alerts_run_on_the_exported_metrics(prometheus, traffic) -> None:
    repo = load_repository(MODEL_REPO)

    def evaluated() -> list[dict]:
        groups = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert {g["name"] for g in groups} == {
            f"medserve-slo-{m}" for m in (*repo.models, *repo.llms)}
        assert all(r["health"] == "ok" for r in rules), [
            (r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        return rules

    rules = eventually(evaluated)
    assert {r["name"] for r in rules if r["type"] == "alerting"} >= {
        "MedserveLatencyBudgetBurn", "MedserveAvailabilityBudgetBurn"}
    for model in (CXR, CT):
        threshold = le_label(repo.manifest(model).slo.latency_threshold_s)
        sel = f'model="{model}",{INFER_ROUTES}'
        hist = f'{sel},status_class="2xx"'

        def slis(model: str = model, sel: str = sel, hist: str = hist,
                 threshold: str = threshold) -> None:
            fails = prometheus.scalar(f'sum(ray_medserve_requests_total{{{sel},status=~"5.."}})')
            count = prometheus.scalar(f"sum(ray_medserve_request_duration_seconds_count{{{hist}}})")
            under = prometheus.scalar(
                f'sum(ray_medserve_request_duration_seconds_bucket{{{hist},le="{threshold}"}})')
            got = prometheus.values(f'medserve:sli:ratio_rate5m{{model="{model}"}}', "slo")
            # Never a 5xx, never a slow success: both ratios are exactly 1 (good == total).
            assert got["availability"] == 1.0 if not fails else 0 <= got["availability"] <= 1
            assert got["latency"] == 1.0 if under == count else 0 <= got["latency"] <= 1
            objective = prometheus.values(f'medserve:slo_objective:ratio{{model="{model}"}}',
                                          "slo")
            assert objective["latency"] == repo.manifest(model).slo.latency_objective

        eventually(slis)


def test_llm_metrics_count_exactly_the_tokens_and_requests_sent(prometheus, traffic) -> None:
    """Token counters move by the usage the replies reported, and TTFT and duration by one
    sample per chat, for the base model and for the adapter, each under its own label."""
    expected = dict(traffic.before_llm)
    for label, prompt, completion in traffic.chat_usage:
        for series, n in (("generation_tokens_total", completion),
                          ("prompt_tokens_total", prompt),
                          ("time_to_first_token_seconds_count", 1),
                          ("request_duration_seconds_count", 1)):
            key = f"{series} {label}"
            expected[key] = expected.get(key, 0) + n
    assert {label for label, _, _ in traffic.chat_usage} == {"none", ADAPTER}
    eventually(lambda: ensure(llm_counts(prometheus) == expected,
                               (llm_counts(prometheus), expected)))
    # The TTFT and inter-token SLO thresholds are exact bucket edges of the exported series.
    slo = load_repository(MODEL_REPO).llms[LLM].slo
    for series, threshold in (("time_to_first_token_seconds", slo.ttft_threshold_s),
                              ("inter_token_latency_seconds", slo.itl_threshold_s)):
        edges = {s["metric"]["le"] for s in prometheus.query(
            f'ray_medserve_llm_{series}_bucket{{model="{LLM}"}}')}
        assert le_label(threshold) in edges, (series, sorted(edges))
    ready = prometheus.values("sum by (model) (ray_medserve_replica_ready)", "model")
    assert ready.get(LLM, 0) >= 1


def test_admission_wait_counts_every_admitted_request(prometheus, traffic) -> None:
    """Every urgent request that reached a model passed the gateway's admission queue once;
    the 415 and the unknown model were refused before it."""
    admitted = (len(traffic.cxr_predict) + len(traffic.cxr_infer) + len(traffic.ct_predict)
                + len(traffic.chat_usage))
    eventually(lambda: ensure(prometheus.scalar(ADMITTED_URGENT)
                               == traffic.before_admitted + admitted))
    # The queues' gauges exist per served model and are never negative.
    for gauge in ("in_flight", "queued"):
        values = prometheus.values(f"sum by (model) (ray_medserve_admission_{gauge})", "model")
        assert {CXR, CT, LLM} <= set(values) and min(values.values()) >= 0, (gauge, values)


def test_every_dashboard_query_runs_and_the_panels_have_data(prometheus,
                                                                      traffic) -> None:
    must_have_data = {"Request rate", "5xx error ratio", "End-to-end latency", "Queue wait",
                      "Admission queue", "Preprocessing and inference", "Batch size",
                      "Replicas ready", "SLI vs objective (1h)", "Burn rate (1h)",
                      "Error budget left (3d)", "Time to first token", "Inter-token latency",
                      "Tokens per second", "Running and waiting requests"}
    grafana = {"$model": ".*", "$version": ".*", "$__rate_interval": "1m"}

    def run_all() -> None:
        empty = set()
        for title, expr in queries():
            for var, value in grafana.items():
                expr = expr.replace(var, value)
            if not prometheus.query(expr):  # query() asserts Prometheus accepted it
                empty.add(title)
        assert not (empty & must_have_data), empty & must_have_data

    eventually(run_all)
