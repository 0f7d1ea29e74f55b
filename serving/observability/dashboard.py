"""The Grafana dashboard, generated so its queries use the same names as the metrics and rules.

Latency panels are `histogram_quantile` over summed bucket rates (per model and version):
Ray's exporter rebuilds histogram sums from bucket midpoints, so means from `_sum` would be
approximate, while buckets and counts are exact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from serving.observability.metrics import (
    ADMISSION_IN_FLIGHT,
    ADMISSION_QUEUED,
    ADMISSION_WAIT,
    BATCH_SIZE,
    ERRORS,
    INFERENCE,
    LLM_ADAPTER_LOAD_DURATION,
    LLM_ADAPTER_LOADS,
    LLM_ADAPTERS_LOADED,
    LLM_GENERATION_TOKENS,
    LLM_ITL,
    LLM_PROMPT_TOKENS,
    LLM_RUNNING,
    LLM_TTFT,
    LLM_WAITING,
    PREPROCESS,
    QUEUE_WAIT,
    REPLICA_READY,
    REQUEST_DURATION,
    REQUESTS,
    REQUESTS_SHED,
    exported,
)
from serving.observability.slo import BUDGET_LEFT, INFERENCE_ROUTES, OBJECTIVE, SLI

UID = "medserve"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'model=~"$model",version=~"$version"'
RATE = "[$__rate_interval]"
BY = "model, version"
WHO = "{{model}} v{{version}}"


def _rate(metric: str, extra: str = "", by: str = BY) -> str:
    return f"sum by ({by}) (rate({exported(metric)}{{{SEL}{extra}}}{RATE}))"


def _quantile(q: float, metric: str, extra: str = "", by: str = BY) -> str:
    inner = _rate(metric + "_bucket", extra, by=by + ", le")
    return f"histogram_quantile({q}, {inner})"


def _quantiles(metric: str, qs: tuple[float, ...] = (0.5, 0.95, 0.99),
               extra: str = "") -> list[tuple[str, str]]:
    return [(_quantile(q, metric, extra), f"{WHO} p{q * 100:g}") for q in qs]


@dataclass
class Panel:
    title: str
    description: str
    targets: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"


@dataclass
class Row:
    title: str
    panels: list[Panel] = field(default_factory=list)


INFER = f',route=~"{INFERENCE_ROUTES}"'
FIVE_XX = ',status=~"5.."'
ROWS = [
    Row("Traffic and errors", [
        Panel("Request rate", "Requests per second by model, version and status code.",
              [(_rate(REQUESTS, by=BY + ", status"), WHO + " {{status}}")], "reqps"),
        Panel("5xx error ratio", "Fraction of inference requests answered with a 5xx.",
              # `or 0 * total`: zero, not "no data", while there are no 5xx at all
              [(f"({_rate(REQUESTS, INFER + FIVE_XX)} or 0 * {_rate(REQUESTS, INFER)}) / "
                f"{_rate(REQUESTS, INFER)}", WHO)], "percentunit"),
        Panel("Requests shed", "429/503/504 by reason (queue_full, preempted, "
              "queue_timeout, at_capacity, replica_unavailable, not_ready, rate_limited).",
              [(_rate(REQUESTS_SHED, by=BY + ", reason"), WHO + " {{reason}}")], "reqps"),
        Panel("Errors by type", "Error responses per second by error type.",
              [(_rate(ERRORS, by=BY + ", type"), WHO + " {{type}}")], "reqps"),
    ]),
    Row("Latency", [
        Panel("End-to-end latency", "Successful inference requests, gateway in to last byte.",
              _quantiles(REQUEST_DURATION, extra=INFER + ',status_class="2xx"'), "s"),
        Panel("Queue wait", "Wait for a batch slot at the model replica.",
              _quantiles(QUEUE_WAIT, (0.5, 0.99)), "s"),
        Panel("Admission queue", "Gateway admission: calls in flight and requests waiting "
              "per model; p99 wait of admitted requests by priority (s).",
              [(f"sum by ({BY}) ({exported(ADMISSION_IN_FLIGHT)}{{{SEL}}})", WHO + " in flight"),
               (f"sum by ({BY}) ({exported(ADMISSION_QUEUED)}{{{SEL}}})", WHO + " waiting"),
               (_quantile(0.99, ADMISSION_WAIT, by=BY + ", priority"),
                WHO + " {{priority}} wait p99")]),
        Panel("Preprocessing and inference", "Decode + preprocess per request; forward pass "
              "per batch.",
              [(_quantile(0.95, PREPROCESS), WHO + " preprocess p95"),
               (_quantile(0.95, INFERENCE), WHO + " inference p95")], "s"),
        Panel("Batch size", "Mean requests per batch, and the 99th percentile.",
              [(f"{_rate(QUEUE_WAIT + '_count')} / {_rate(BATCH_SIZE + '_count')}", WHO + " mean"),
               (_quantile(0.99, BATCH_SIZE), WHO + " p99")]),
        Panel("Replicas ready", "Replicas that can serve, per model and version.",
              [(f"sum by ({BY}) ({exported(REPLICA_READY)}{{{SEL}}})", WHO)]),
    ]),
    Row("SLOs", [
        Panel("SLI vs objective (1h)", "Each SLI over the last hour against its objective.",
              [(f"{SLI.format(window='1h')}{{{SEL}}}", WHO + " {{slo}}"),
               (f'{OBJECTIVE}{{model=~"$model"}}', "{{model}} {{slo}} objective")],
              "percentunit"),
        Panel("Burn rate (1h)", "Error budget spend relative to sustainable (1 = on budget; "
              "14.4 pages).",
              [(f"(1 - {SLI.format(window='1h')}{{{SEL}}}) / on (model, slo) group_left() "
                f'(1 - {OBJECTIVE}{{model=~"$model"}})', WHO + " {{slo}}")]),
        Panel("Error budget left (3d)", "1 - bad fraction / allowed bad fraction, last 3 days.",
              [(f"{BUDGET_LEFT}{{{SEL}}}", WHO + " {{slo}}")], "percentunit", "stat"),
    ]),
    Row("LLM", [
        Panel("Time to first token", "Replica receipt (adapter load included) to first "
              "generated token.",
              _quantiles(LLM_TTFT, (0.5, 0.99)), "s"),
        Panel("Inter-token latency", "Gap between consecutive streamed text chunks (a "
              "chunk is one token or, when the engine runs ahead, a few).",
              _quantiles(LLM_ITL, (0.5, 0.99)), "s"),
        Panel("Tokens per second", "Generated and prompt tokens per second.",
              [(_rate(LLM_GENERATION_TOKENS), WHO + " generated"),
               (_rate(LLM_PROMPT_TOKENS), WHO + " prompt")]),
        Panel("Running and waiting requests", "Sequences in the engine batch and queued.",
              [(f"sum by ({BY}) ({exported(LLM_RUNNING)}{{{SEL}}})", WHO + " running"),
               (f"sum by ({BY}) ({exported(LLM_WAITING)}{{{SEL}}})", WHO + " waiting")]),
        Panel("Adapter loads", "Adapter loads per second, their p95 load time, and the most "
              "adapters one replica holds.",
              [(_rate(LLM_ADAPTER_LOADS, by=BY + ", adapter"), WHO + " {{adapter}} loads/s"),
               (_quantile(0.95, LLM_ADAPTER_LOAD_DURATION), WHO + " load p95 (s)"),
               (f"max by ({BY}) ({exported(LLM_ADAPTERS_LOADED)}{{{SEL}}})",
                WHO + " held per replica (max)")]),
    ]),
]


def _panel(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": pid, "type": p.kind, "title": p.title, "description": p.description,
        "datasource": DATASOURCE, "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom"},
                    "tooltip": {"mode": "multi"}} if p.kind == "timeseries" else {},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr,
                     "legendFormat": legend} for i, (expr, legend) in enumerate(p.targets)],
    }


def _variable(name: str, query: str) -> dict[str, Any]:
    return {"name": name, "type": "query", "datasource": DATASOURCE, "definition": query,
            "query": {"query": query, "refId": name}, "refresh": 2, "includeAll": True,
            "multi": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"}}


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y, pid = 0, 1
    for row in ROWS:
        panels.append({"id": pid, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        for i, p in enumerate(row.panels):
            panels.append(_panel(p, pid, 12 * (i % 2), y + 8 * (i // 2)))
            pid += 1
        y += 8 * ((len(row.panels) + 1) // 2)
    requests = exported(REQUESTS)
    return {
        "uid": UID, "title": "Medserve", "tags": ["medserve"], "editable": True,
        "schemaVersion": 39, "version": 1, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus",
             "label": "Prometheus"},
            _variable("model", f"label_values({requests}, model)"),
            _variable("version", f'label_values({requests}{{model=~"$model"}}, version)'),
        ]},
        "panels": panels,
    }


def dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query on the dashboard, Grafana's variables still in."""
    return [(p.title, expr) for row in ROWS for p in row.panels for expr, _ in p.targets]
