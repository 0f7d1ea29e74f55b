"""SLO-as-code: Prometheus recording rules and burn-rate alerts generated from the manifests.

Each model's manifest states its SLOs; this module turns them into, per model:

* SLIs over 5m, 30m, 1h, 2h, 6h, 1d and 3d (`medserve:sli:ratio_rate<w>`, label `slo`):
  latency, the fraction of successful inference requests under the manifest threshold (a
  bucket ratio: the threshold is an exact bucket edge, see `serving.observability.metrics`);
  availability, the fraction of inference requests not answered 5xx; for LLMs, TTFT and
  inter-token latency.
* the objective (`medserve:slo_objective:ratio`) and the error budget left over 3 days;
* multi-window, multi-burn-rate alerts from the Google SRE workbook (ch. 5): page at 14.4x
  over 1h and 5m or 6x over 6h and 30m, ticket at 3x over 1d and 2h or 1x over 3d and 6h.
  The short window makes an alert stop soon after the burn stops.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from serving.observability.metrics import (
    LLM_ITL,
    LLM_TTFT,
    REQUEST_DURATION,
    REQUESTS,
    exported,
    le_label,
)
from serving.yaml_out import dump_all

WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
BUDGET_WINDOW = "3d"  # the longest window recorded: "budget left" is over it
# (severity, ((burn rate, long window, short window), ...)); either pair fires the alert.
BURN_ALERTS: tuple[tuple[str, tuple[tuple[float, str, str], ...]], ...] = (
    ("page", ((14.4, "1h", "5m"), (6.0, "6h", "30m"))),
    ("ticket", ((3.0, "1d", "2h"), (1.0, "3d", "6h"))),
)
# Requests that run a model; metadata and readiness calls would flatter the SLIs.
INFERENCE_ROUTES = ".*/(predict|infer)|/v1/chat/completions|/v1/completions"
SLI = "medserve:sli:ratio_rate{window}"
WINDOW = "$window"  # placeholder in the rate templates (PromQL braces rule out str.format)
OBJECTIVE = "medserve:slo_objective:ratio"
BUDGET_LEFT = f"medserve:slo_error_budget_remaining:ratio_rate{BUDGET_WINDOW}"
DEFAULT_RUNBOOK = "README.md"

ALERT_NAMES = {
    "latency": "MedserveLatencyBudgetBurn",
    "availability": "MedserveAvailabilityBudgetBurn",
    "ttft": "MedserveTTFTBudgetBurn",
    "itl": "MedserveInterTokenBudgetBurn",
}


@dataclass(frozen=True)
class Indicator:
    """One SLI of one model: good and total event rates, PromQL over the `WINDOW` range."""

    model: str
    slo: str
    objective: float
    good: str
    total: str
    meaning: str


REGEX_LABELS = ("route", "status")


def _selector(**labels: str) -> str:
    return "{" + ",".join(
        f'{k}{"=~" if k in REGEX_LABELS else "="}"{v}"' for k, v in labels.items()
    ) + "}"


def _rate(metric: str, selector: str) -> str:
    return f"sum by (model, version) (rate({metric}{selector}[{WINDOW}]))"


def _bucket_ratio(model: str, slo: str, objective: float, metric: str, threshold: float,
                  meaning: str, **labels: str) -> Indicator:
    sel = _selector(model=model, **labels)
    bucket_sel = _selector(model=model, **labels, le=le_label(threshold))
    return Indicator(model, slo, objective,
                     good=_rate(exported(metric) + "_bucket", bucket_sel),
                     total=_rate(exported(metric) + "_count", sel), meaning=meaning)


def indicators(manifest: Any) -> list[Indicator]:
    """The SLIs a manifest's `slo` section defines (imaging or LLM)."""
    name, slo = manifest.name, manifest.slo
    requests = exported(REQUESTS)
    sel = _selector(model=name, route=INFERENCE_ROUTES)
    bad_sel = _selector(model=name, route=INFERENCE_ROUTES, status="5..")
    total = _rate(requests, sel)
    # `or 0 * total`: with no 5xx series yet the ratio must be 0, not an empty result.
    bad = f"({_rate(requests, bad_sel)} or 0 * {total})"
    out = [Indicator(name, "availability", slo.availability_objective,
                     good=f"({total} - {bad})", total=total,
                     meaning="inference requests not answered with a 5xx")]
    if hasattr(slo, "latency_threshold_s"):
        t = slo.latency_threshold_s
        out.append(_bucket_ratio(
            name, "latency", slo.latency_objective, REQUEST_DURATION, t,
            f"successful inference requests answered within {t:g} s",
            route=INFERENCE_ROUTES, status_class="2xx"))
    if hasattr(slo, "ttft_threshold_s"):
        t = slo.ttft_threshold_s
        out.append(_bucket_ratio(name, "ttft", slo.ttft_objective, LLM_TTFT, t,
                                 f"first tokens within {t:g} s"))
    if hasattr(slo, "itl_threshold_s"):
        t = slo.itl_threshold_s
        out.append(_bucket_ratio(name, "itl", slo.itl_objective, LLM_ITL, t,
                                 f"inter-token gaps within {t:g} s"))
    return out


def _num(x: float) -> str:
    return f"{x:.6g}"  # 14.4 * (1 - 0.99) is 0.14400000000000013 in binary floating point


def _sli(ind: Indicator, window: str) -> str:
    return SLI.format(window=window) + _selector(model=ind.model, slo=ind.slo)


def _alert(ind: Indicator, severity: str, pairs: tuple[tuple[float, str, str], ...],
           runbook_url: str) -> dict[str, Any]:
    budget = 1 - ind.objective
    clauses = [
        f"(\n  (1 - {_sli(ind, long)}) > ({_num(rate)} * {_num(budget)})\n  and\n"
        f"  (1 - {_sli(ind, short)}) > ({_num(rate)} * {_num(budget)})\n)"
        for rate, long, short in pairs
    ]
    name = ALERT_NAMES[ind.slo]
    burns = ", or ".join(f"{_num(r)}x over {lo} and {sh}" for r, lo, sh in pairs)
    return {
        "alert": name,
        "expr": "\nor\n".join(clauses) + "\n",
        "labels": {"severity": severity, "model": ind.model, "slo": ind.slo},
        "annotations": {
            "summary": f"{ind.model} version {{{{ $labels.version }}}}: {ind.slo} error budget "
                       f"burning ({severity})",
            # No $value here: annotations stay fixed per alert, so promtool tests can pin them.
            "description": f"Objective: {_num(ind.objective * 100)}% of {ind.meaning}. The error "
                           f"budget burns faster than {burns}.",
            # The README's runbook section has one heading per alert name.
            "runbook_url": f"{runbook_url}#{name.lower()}",
        },
    }


def model_group(manifest: Any, runbook_url: str = DEFAULT_RUNBOOK) -> dict[str, Any]:
    """One rule group per model: SLIs first, so its alerts read this evaluation's values.
    Every rule carries its model as a static label too, so rules of different models never
    look like duplicates to `promtool check rules`."""
    inds = indicators(manifest)
    rules: list[dict[str, Any]] = []
    for ind in inds:
        rules.append({"record": OBJECTIVE, "expr": f"vector({_num(ind.objective)})",
                      "labels": {"model": ind.model, "slo": ind.slo}})
        for w in WINDOWS:
            rules.append({
                "record": SLI.format(window=w),
                "expr": f"{ind.good}\n/\n{ind.total}\n".replace(WINDOW, w),
                "labels": {"model": ind.model, "slo": ind.slo},
            })
        rules.append({
            "record": BUDGET_LEFT,
            "expr": f"1 - (1 - {_sli(ind, BUDGET_WINDOW)}) / {_num(1 - ind.objective)}",
            "labels": {"model": ind.model, "slo": ind.slo},
        })
    for ind in inds:
        for severity, pairs in BURN_ALERTS:
            rules.append(_alert(ind, severity, pairs, runbook_url))
    return {"name": f"medserve-slo-{manifest.name}", "rules": rules}


def rules(manifests: Iterable[Any], runbook_url: str = DEFAULT_RUNBOOK) -> dict[str, Any]:
    return {"groups": [model_group(m, runbook_url) for m in manifests]}


HEADER = "# Generated by `medserve build-observability` from model_repo: do not edit by hand.\n"


def rules_yaml(manifests: Iterable[Any], runbook_url: str = DEFAULT_RUNBOOK) -> str:
    body = dump_all([rules(manifests, runbook_url)], width=1000)
    return HEADER + body
