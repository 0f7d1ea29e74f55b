"""Core kinds validate against the Kubernetes schema, and checkov finds nothing to fail."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from serving.deploy.k8s import pods as k8s_pods
from tests.k8s.manifests import K8S_VERSION, groups, ray_pods

# Custom resources: kubernetes-validate has no schema for them; test_rayservice.py checks
# the RayService structurally and its serveConfigV2 with Ray's own schema.
CRDS = {"RayService", "PodMonitor", "PrometheusRule"}
# Every accepted checkov skip, with its reason stated in the skip annotation itself.
ALLOWED_SKIPS = {
    "CKV_K8S_43": k8s_pods.SKIP_IMAGE_DIGEST,
    "CKV_K8S_38": k8s_pods.SKIP_HEAD_TOKEN,
    "CKV_K8S_15": k8s_pods.SKIP_PULL_POLICY,
}


def _validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_core_kinds_and_ray_pods_are_valid_kubernetes(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        core = [d for d in docs if d["kind"] not in CRDS]
        assert len(core) >= 10, name
        for doc in [*core, *ray_pods(docs, name)]:
            _validate(doc)


def test_validation_rejects_a_broken_pod_template(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    pod = copy.deepcopy(ray_pods(rendered["production"], "production")[0])
    pod["spec"]["containers"][0]["securityContext"]["runAsNonRot"] = True  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(pod)


def test_checkov_passes_with_only_reasoned_skips(
    rendered: dict[str, list[dict[str, Any]]], checkov_report: dict[str, dict[str, Any]],
) -> None:
    failed = [(c["check_id"], c["resource"], c["file_path"])
              for r in checkov_report.values() for c in r["results"]["failed_checks"]]
    assert not failed
    k8s = checkov_report["kubernetes"]["results"]
    # The Ray pods were really scanned: one resource per group per overlay.
    scanned = {c["resource"] for c in k8s["passed_checks"]}
    for name, docs in rendered.items():
        for group in groups(docs):
            assert f"Pod.medserve.{name}-{group}" in scanned
    assert checkov_report["dockerfile"]["summary"]["passed"] > 0
    for c in k8s["skipped_checks"]:
        assert c["check_id"] in ALLOWED_SKIPS, c["check_id"]
        reason = c["check_result"]["suppress_comment"]
        assert ALLOWED_SKIPS[c["check_id"]].endswith(reason.strip()), reason
