"""Prometheus metrics: names, labels, buckets, and the objects deployments record into.

Metrics go through Ray's metrics agent (`ray.serve.metrics`), which serves them on the Ray
metrics export port with `ray_` in front of every name and adds the Serve tags `deployment`,
`replica` and `application`. What the agent does that the rules and tests rely on:

* one bucket layout per metric name per node: the first process to register a histogram fixes
  its buckets, so every process must build identical buckets. They are derived from the whole
  repository (every model's SLO thresholds), never from one model alone;
* the `le` label is Python's `str(float)` of the boundary (`0.5`, `10.0`): `le_label` is
  what the generated rules select on, so each SLO threshold is an exact bucket edge;
* bucket counts are exact, but `_sum` is rebuilt from bucket midpoints: use buckets (quantiles,
  fractions under a threshold) and `_count`, not `_sum / _count`;
* a gauge that is not set again within two report intervals disappears, hence `heartbeat`.

Labels are low-cardinality by construction: model and version come from the repository
(`unknown` for anything else a client sends), routes are route templates, never paths.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from serving.protocol.priority import DEFAULT_PRIORITY, PRIORITIES

PREFIX = "medserve_"
EXPORTED_PREFIX = "ray_"  # Ray's agent puts its namespace in front of every name

REQUESTS = "medserve_requests_total"
REQUEST_DURATION = "medserve_request_duration_seconds"
REQUESTS_SHED = "medserve_requests_shed_total"
ERRORS = "medserve_errors_total"
QUEUE_WAIT = "medserve_queue_wait_seconds"
PREPROCESS = "medserve_preprocess_duration_seconds"
INFERENCE = "medserve_inference_duration_seconds"
BATCH_SIZE = "medserve_batch_size"
BATCHES_ABANDONED = "medserve_batches_abandoned_total"
REPLICA_READY = "medserve_replica_ready"
ADMISSION_WAIT = "medserve_admission_wait_seconds"
ADMISSION_IN_FLIGHT = "medserve_admission_in_flight"
ADMISSION_QUEUED = "medserve_admission_queued"
JOB_PREDICTIONS = "medserve_job_predictions_total"
LLM_TTFT = "medserve_llm_time_to_first_token_seconds"
LLM_ITL = "medserve_llm_inter_token_latency_seconds"
LLM_DURATION = "medserve_llm_request_duration_seconds"
LLM_PROMPT_TOKENS = "medserve_llm_prompt_tokens_total"
LLM_GENERATION_TOKENS = "medserve_llm_generation_tokens_total"
LLM_RUNNING = "medserve_llm_requests_running"
LLM_WAITING = "medserve_llm_requests_waiting"
LLM_ADAPTERS_LOADED = "medserve_llm_adapters_loaded"
LLM_ADAPTER_LOADS = "medserve_llm_adapter_loads_total"
LLM_ADAPTER_LOAD_DURATION = "medserve_llm_adapter_load_duration_seconds"

UNKNOWN = "unknown"  # a model, version or adapter name that is not in the repository
NONE = "none"  # routes that are about no model (health, server metadata, docs)
UNMATCHED = "unmatched"  # paths no route matched: the path itself is client text

# Ladders the SLO thresholds are merged into (seconds). Requests span a 2 ms radiograph batch
# to a multi-second CT volume; the top edges sit above the gateway's request timeout.
LATENCY_LADDER_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0)
TTFT_LADDER_S = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_LADDER_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
ADAPTER_LOAD_LADDER_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_LADDER = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)


def exported(name: str) -> str:
    """The name Prometheus sees."""
    return EXPORTED_PREFIX + name


def buckets(ladder: Iterable[float], thresholds: Iterable[float] = ()) -> list[float]:
    """Sorted bucket edges: the ladder plus every threshold exactly, so "fraction under T"
    is a bucket ratio and needs no interpolation."""
    edges = {float(x) for x in (*ladder, *thresholds)}
    if any(not 0 < x < float("inf") for x in edges):
        raise ValueError("bucket edges must be positive and finite")
    return sorted(edges)


def _slo_values(manifests: Iterable[Any], section: str, field: str) -> list[float]:
    # Duck-typed: the repository may hold manifests of several kinds (imaging, LLM).
    found = (getattr(getattr(m, section, None), field, None) for m in manifests)
    return [float(v) for v in found if v is not None]


def latency_buckets(manifests: Iterable[Any]) -> list[float]:
    """Latency buckets for every process of a repository: the ladder plus every SLO threshold."""
    return buckets(LATENCY_LADDER_S, _slo_values(manifests, "slo", "latency_threshold_s"))


def batch_buckets(manifests: Iterable[Any]) -> list[float]:
    return buckets(BATCH_LADDER, _slo_values(manifests, "batching", "max_batch_size"))


def le_label(edge: float) -> str:
    """The `le` label value the Ray exporter writes for a bucket edge."""
    return str(float(edge))


def priority_label(header: str | None) -> str:
    value = (header or "").strip().lower()
    return value if value in PRIORITIES else DEFAULT_PRIORITY


def status_class(status: int) -> str:
    return f"{status // 100}xx"


@dataclass(frozen=True)
class ModelLabels:
    """Maps client-supplied model/version names to label values from the repository only."""

    versions: Mapping[str, frozenset[str]]
    served: Mapping[str, str]

    @classmethod
    def from_manifests(cls, manifests: Iterable[Any]) -> ModelLabels:
        ms = list(manifests)
        return cls(
            versions={m.name: frozenset(v.version for v in m.versions) for m in ms},
            served={m.name: m.served_version for m in ms},
        )

    def __call__(self, model: str | None, version: str | None) -> tuple[str, str]:
        if model is None:
            return NONE, NONE
        if model not in self.versions:
            model = model.split(":", 1)[0]  # OpenAI model ids name an adapter: "<model>:<adapter>"
            if model not in self.versions:
                return UNKNOWN, UNKNOWN
        label = version or self.served[model]
        return model, label if label in self.versions[model] else UNKNOWN


def heartbeat(record: Callable[[], None], period_s: float) -> threading.Event:
    """Call `record` every `period_s` on a daemon thread (keeps gauges alive); set the
    returned event to stop."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            record()
            stop.wait(period_s)

    threading.Thread(target=loop, name="medserve-metrics", daemon=True).start()
    return stop


def heartbeat_period_s() -> float:
    """Half Ray's report interval: a gauge set this often never ages out of the agent."""
    import ray

    return min(5.0, max(0.5, ray._config.metrics_report_interval_ms() / 2000))


def _serve_metrics() -> Any:
    # ray.serve.metrics: adds the Serve tags; its `tag_keys` annotation says one-tuple, but
    # any tuple of names is what it takes.
    from ray.serve import metrics

    return metrics


def _with_tags(metric: Any, tags: dict[str, str]) -> Any:
    # Serve's set_default_tags returns None, unlike ray.util.metrics' (which returns self).
    metric.set_default_tags(dict(tags))
    return metric


class GatewayMetrics:
    """Per-request metrics, recorded once per response by the gateway's middleware."""

    def __init__(self, latency_buckets_s: Sequence[float]) -> None:
        sm = _serve_metrics()
        self.requests = sm.Counter(REQUESTS, "HTTP requests answered.",
                                   ("model", "version", "route", "status", "priority"))
        self.duration = sm.Histogram(
            REQUEST_DURATION, "End-to-end time in the gateway, request to last byte.",
            list(latency_buckets_s), ("model", "version", "route", "status_class", "priority"))
        self.shed = sm.Counter(
            REQUESTS_SHED, "Requests refused or dropped under load (429/503/504).",
            ("model", "version", "route", "reason"))
        self.errors = sm.Counter(ERRORS, "Error responses by error type.",
                                 ("model", "version", "route", "type"))

    def record(
        self, *, model: str, version: str, route: str, status: int, priority: str,
        duration_s: float, error_type: str | None = None, shed_reason: str | None = None,
    ) -> None:
        where = {"model": model, "version": version, "route": route}
        self.requests.inc(1, {**where, "status": str(status), "priority": priority})
        self.duration.observe(
            duration_s, {**where, "status_class": status_class(status), "priority": priority}
        )
        if error_type is not None:
            self.errors.inc(1, {**where, "type": error_type})
        if shed_reason is not None:
            self.shed.inc(1, {**where, "reason": shed_reason})


class AdmissionMetrics:
    """The gateway's admission queues (serving/gateway/admission.py): how long admitted requests
    waited for a slot, by priority, and per model the calls in flight and the requests
    waiting, read from `stats` on a heartbeat. Shed requests are in `REQUESTS_SHED`."""

    def __init__(
        self, latency_buckets_s: Sequence[float],
        stats: Callable[[], Iterable[tuple[str, str, int, int]]],
    ) -> None:
        """`stats()` yields (model, version, in flight, queued) per admission queue."""
        sm = _serve_metrics()
        keys = ("model", "version")
        self.wait = sm.Histogram(
            ADMISSION_WAIT, "Wait in the gateway's admission queue, per admitted request.",
            list(latency_buckets_s), (*keys, "priority"))
        self.in_flight = sm.Gauge(ADMISSION_IN_FLIGHT,
                                  "Calls in flight from this gateway to the model.", keys)
        self.queued = sm.Gauge(ADMISSION_QUEUED,
                               "Requests waiting in this gateway's admission queue.", keys)
        self.stats = stats
        self.stop = heartbeat(self._gauges, heartbeat_period_s())

    def admitted(self, model: str, version: str, priority: str, wait_s: float) -> None:
        self.wait.observe(wait_s, {"model": model, "version": version, "priority": priority})

    def _gauges(self) -> None:
        for model, version, in_flight, queued in self.stats():
            tags = {"model": model, "version": version}
            self.in_flight.set(float(in_flight), tags)
            self.queued.set(float(queued), tags)


class JobMetrics:
    """Predictions study jobs make (serving/jobs/): model work that no HTTP request counts."""

    def __init__(self) -> None:
        self.predictions = _serve_metrics().Counter(
            JOB_PREDICTIONS, "Predictions made by study jobs, by status code.",
            ("model", "version", "status"))

    def predicted(self, model: str, version: str, status: int) -> None:
        self.predictions.inc(1, {"model": model, "version": version, "status": str(status)})


class ModelMetrics:
    """Per-replica metrics of one model deployment: stage latencies, batches, readiness."""

    def __init__(self, model: str, version: str, latency_buckets_s: Sequence[float],
                 batch_buckets: Sequence[float] = BATCH_LADDER) -> None:
        sm = _serve_metrics()
        tags = {"model": model, "version": version}
        keys = ("model", "version")
        edges = list(latency_buckets_s)

        def histogram(name: str, description: str, bounds: list[float]) -> Any:
            return _with_tags(sm.Histogram(name, description, bounds, keys), tags)

        self.queue_wait = histogram(QUEUE_WAIT, "Wait for a batch slot, per request.", edges)
        self.preprocess = histogram(PREPROCESS, "Decode and preprocessing, per request.", edges)
        self.inference = histogram(INFERENCE, "Model forward pass, per batch.", edges)
        self.batch_size = histogram(BATCH_SIZE, "Requests per batch.", list(batch_buckets))
        self.abandoned = _with_tags(sm.Counter(
            BATCHES_ABANDONED, "Batches stopped mid-way: every request in them was given up.",
            keys), tags)
        self.ready = _with_tags(sm.Gauge(
            REPLICA_READY, "1 while this replica can serve; sum by model and version.", keys
        ), tags)

    def batch(self, queue_waits_s: Sequence[float], inference_s: float) -> None:
        self.batch_size.observe(len(queue_waits_s))
        self.inference.observe(inference_s)
        for wait in queue_waits_s:
            self.queue_wait.observe(wait)

    def keep_ready(self, is_ready: Callable[[], bool]) -> threading.Event:
        return heartbeat(lambda: self.ready.set(1.0 if is_ready() else 0.0), heartbeat_period_s())


class LLMMetrics:
    """LLM engine metrics, named after vLLM's. The TTFT and inter-token thresholds of the LLM
    manifest's SLO become exact bucket edges. `tags(adapter)` gives the label values: the
    adapter only if the manifest lists it (`none` for the base model, else `unknown`)."""

    def __init__(
        self, model: str, version: str, adapters: Iterable[str],
        ttft_thresholds_s: Iterable[float] = (), itl_thresholds_s: Iterable[float] = (),
        latency_buckets_s: Sequence[float] = LATENCY_LADDER_S,
    ) -> None:
        sm = _serve_metrics()
        self.model, self.version, self.adapters = model, version, frozenset(adapters)
        keys = ("model", "version", "adapter")
        self.ttft = sm.Histogram(LLM_TTFT, "Time to first token.",
                                 buckets(TTFT_LADDER_S, ttft_thresholds_s), keys)
        self.itl = sm.Histogram(LLM_ITL, "Time between consecutive output tokens.",
                                buckets(ITL_LADDER_S, itl_thresholds_s), keys)
        self.duration = sm.Histogram(
            LLM_DURATION, "Engine time of a request, admission to last token.",
            list(latency_buckets_s), keys)
        self.prompt_tokens = sm.Counter(LLM_PROMPT_TOKENS, "Prompt tokens processed.", keys)
        self.generation_tokens = sm.Counter(LLM_GENERATION_TOKENS, "Tokens generated.", keys)
        self.adapter_loads = sm.Counter(LLM_ADAPTER_LOADS, "Adapter loads into a replica.", keys)
        self.adapter_load_duration = sm.Histogram(
            LLM_ADAPTER_LOAD_DURATION, "Time to load an adapter.", list(ADAPTER_LOAD_LADDER_S),
            keys)
        engine_tags = {"model": model, "version": version}
        # Gauges age out unless set again: set them on every engine step or via `heartbeat`.
        self.running = _with_tags(sm.Gauge(LLM_RUNNING, "Requests in the running batch.",
                                           ("model", "version")), engine_tags)
        self.waiting = _with_tags(sm.Gauge(LLM_WAITING, "Requests waiting for a batch slot.",
                                           ("model", "version")), engine_tags)
        self.adapters_loaded = _with_tags(sm.Gauge(
            LLM_ADAPTERS_LOADED, "Adapters this replica holds (at most max_adapters_per_replica).",
            ("model", "version")), engine_tags)
        # The imaging replicas' readiness gauge: "replicas ready" is one query for every model.
        self.ready = _with_tags(sm.Gauge(
            REPLICA_READY, "1 while this replica can serve; sum by model and version.",
            ("model", "version")), engine_tags)

    def tags(self, adapter: str | None = None) -> dict[str, str]:
        label = NONE if adapter is None else adapter if adapter in self.adapters else UNKNOWN
        return {"model": self.model, "version": self.version, "adapter": label}
