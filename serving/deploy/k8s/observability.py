"""Prometheus Operator and Grafana objects wrapping the generated observability config.

The rules and the dashboard are built by `serving.observability.slo` and
`serving.observability.dashboard` (the same generators `medserve build-observability` uses);
this module only puts them into a
PrometheusRule and a dashboard ConfigMap, so the cluster alerts on exactly what was reviewed.
"""

from __future__ import annotations

from typing import Any

from serving.deploy.k8s.pods import APP_LABEL
from serving.repository.store import Repository
from serving.schema.cluster import ClusterConfig

# kube-prometheus-stack selects rules and monitors by its Helm release label by default.
PROMETHEUS_SELECTOR = {"release": "prometheus"}
# The Grafana sidecar of kube-prometheus-stack loads ConfigMaps carrying this label.
GRAFANA_DASHBOARD_LABEL = {"grafana_dashboard": "1"}


def prometheus_rule(repository: Repository) -> dict[str, Any]:
    from serving.observability import slo

    manifests = list(repository.all_manifests.values())
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "medserve-slo", "labels": {**APP_LABEL, **PROMETHEUS_SELECTOR}},
        "spec": slo.rules(manifests),
    }


def dashboard_configmap() -> dict[str, Any]:
    from serving.observability import dashboard

    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "medserve-dashboard",
                     "labels": {**APP_LABEL, **GRAFANA_DASHBOARD_LABEL}},
        "data": {"medserve.json": dashboard.dashboard_json()},
    }


def documents(repository: Repository, cluster: ClusterConfig) -> dict[str, dict[str, Any]]:
    """File name -> object, for each overlay's generated folder."""
    return {
        "prometheusrule.yaml": prometheus_rule(repository),
        "grafana-dashboard.yaml": dashboard_configmap(),
    }
