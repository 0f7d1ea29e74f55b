"""Canary traffic splits and autoscaling options: manifest validation, the per-request
version pick, the Gateway's user_config, `medserve rollout` (no Ray)."""

from __future__ import annotations

import inspect
import math
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema
from typer.testing import CliRunner

from serving.app import GATEWAY, deployment_name, deployment_options, serve_config
from serving.cli.main import app
from serving.deployments.gateway import Gateway
from serving.errors import ModelLoadError, ModelNotFound
from serving.gateway.targets import handle_key
from serving.gateway.traffic import Routing, pick, revision, routing
from serving.repository.rollout import parse_weights, set_traffic
from serving.repository.store import load_repository
from serving.schema.imaging import ModelManifest
from serving.schema.llm import LLMManifest
from tests.canary import MODEL, canary_repo
from tests.conftest import MODEL_REPO

runner = CliRunner()


def _cxr(**changes: Any) -> dict[str, Any]:
    doc = yaml.safe_load((MODEL_REPO / MODEL / "manifest.yaml").read_text())
    (v1,) = doc["versions"]
    doc["versions"] = [v1, {**v1, "version": "2"}]
    return {**doc, **changes}


def _within_binomial(hits: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """|hits - np| within `sigmas` standard deviations: a false failure about 1 in 1.7e6."""
    return abs(hits - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_traffic_split_is_validated_against_the_versions() -> None:
    m = ModelManifest.model_validate(_cxr(traffic={1: 90, "2": 10}))  # YAML's integer keys too
    assert m.traffic_split == {"1": 90, "2": 10}
    assert ModelManifest.model_validate(_cxr(traffic={"1": 100, "2": 0})).traffic_split == {
        "1": 100
    }
    assert ModelManifest.model_validate(_cxr()).traffic_split == {"1": 100}  # default_version
    for bad, why in [({"3": 10}, "not in versions"), ({"1": -1, "2": 5}, ">= 0"),
                     ({"1": 0, "2": 0}, "positive sum"), ({}, "positive sum")]:
        with pytest.raises(ValidationError, match=why):
            ModelManifest.model_validate(_cxr(traffic=bad))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_pick_follows_the_weights_within_binomial_tolerance(p: float) -> None:
    n = 20_000
    split = {"1": round(100 * (1 - p)), "2": round(100 * p)}
    rng = random.Random(20261125)
    hits = sum(pick(split, rng) == "2" for _ in range(n))
    assert _within_binomial(hits, n, p), (hits, n * p)
    assert {pick({"1": 0, "2": 5}, rng) for _ in range(200)} == {"2"}


def test_routing_rejects_non_positive_weights() -> None:
    assert routing(load_repository(MODEL_REPO)).traffic[MODEL] == {"1": 100}
    with pytest.raises(ValidationError):
        Routing(traffic={MODEL: {"1": 0}})
    with pytest.raises(ValidationError):
        Routing(traffic={MODEL: {}})


def test_split_goes_to_the_gateway_user_config_and_leaves_model_deployments_alone(
    tmp_path: Path,
) -> None:
    repo = canary_repo(tmp_path / "repo", traffic={"1": 90, "2": 10})
    before = serve_config(str(repo), None)
    ServeDeploySchema.model_validate(before)
    set_traffic(repo, MODEL, {"1": 100})
    after = serve_config(str(repo), None)
    (app_before,), (app_after,) = before["applications"], after["applications"]
    gateway = {d["name"]: d for d in app_after["deployments"]}[GATEWAY]
    assert gateway["user_config"] == {"traffic": {MODEL: {"1": 100}}}
    # Same revision (Serve's code version) and same model deployments: nothing restarts.
    assert app_before["args"]["revision"] == app_after["args"]["revision"]
    models = [d for d in app_after["deployments"] if d["name"] != GATEWAY]
    assert models == [d for d in app_before["deployments"] if d["name"] != GATEWAY]
    assert {d["name"] for d in models} == {deployment_name(MODEL, "1"), deployment_name(MODEL, "2")}
    # Anything else in a manifest changes the revision, so Serve rebuilds the app.
    manifest = repo / MODEL / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("description: Chest", "description: CXR"))
    assert revision(load_repository(repo), None) != app_after["args"]["revision"]


def test_gateway_reconfigure_swaps_the_split_and_pins_win(tmp_path: Path) -> None:
    repo = canary_repo(tmp_path / "repo", traffic={"1": 50, "2": 50})
    handles: dict[str, Any] = {handle_key(MODEL, v): f"handle-{v}" for v in ("1", "2")}
    # The class under Serve's ASGI ingress wrapper (whose __init__ starts the FastAPI app).
    cls = next(c for c in Gateway.func_or_class.__mro__  # type: ignore[attr-defined]
               if "reconfigure" in vars(c)
               and not inspect.iscoroutinefunction(vars(c).get("__init__")))
    gw = cls(str(repo), {}, handles)
    gw.reconfigure(routing(load_repository(repo)).model_dump())
    seen = {gw.resolve(MODEL).version for _ in range(200)}
    assert seen == {"1", "2"}  # each with p=0.5: both missing is a 2^-199 event
    gw.reconfigure({"traffic": {MODEL: {"1": 100}}})
    assert gw.routing() == {"traffic": {MODEL: {"1": 100}}}
    assert {gw.resolve(MODEL).version for _ in range(200)} == {"1"}
    assert {gw.resolve(MODEL, "2").version for _ in range(20)} == {"2"}  # a pin beats the split
    with pytest.raises(ModelNotFound):
        gw.resolve(MODEL, "3")
    with pytest.raises(ValueError, match="unserved"):
        gw.reconfigure({"traffic": {MODEL: {"3": 100}}})
    assert gw.routing() == {"traffic": {MODEL: {"1": 100}}}  # a bad split changes nothing


def test_rollout_cli_edits_one_line_keeps_comments_and_refuses_bad_splits(
    tmp_path: Path,
) -> None:
    repo = canary_repo(tmp_path / "repo")
    manifest = repo / MODEL / "manifest.yaml"
    manifest.write_text("# kept comment\n" + manifest.read_text())
    done = runner.invoke(app, ["rollout", MODEL, "--weights", "1=90,2=10", "--repo", str(repo)])
    assert done.exit_code == 0, done.output
    assert load_repository(repo).manifest(MODEL).traffic_split == {"1": 90, "2": 10}
    done = runner.invoke(app, ["rollout", MODEL, "--weights", "1=100", "--repo", str(repo)])
    assert done.exit_code == 0, done.output
    text = manifest.read_text()
    assert text.startswith("# kept comment\n") and text.count("traffic:") == 1
    assert load_repository(repo).manifest(MODEL).traffic_split == {"1": 100}
    listed = runner.invoke(app, ["models", "--repo", str(repo)])
    assert "100%" in listed.output and "0%" in listed.output
    for bad in ("3=100", "1=0", "1=-5"):
        refused = runner.invoke(app, ["rollout", MODEL, "--weights", bad, "--repo", str(repo)])
        assert refused.exit_code == 1
    assert manifest.read_text() == text  # untouched by the refused edits
    with pytest.raises(ModelLoadError):
        parse_weights("1:100")


def test_autoscaling_knobs_reach_serve_and_are_valid_for_it() -> None:
    doc = _cxr(scaling={"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2,
                        "upscale_delay_s": 1, "downscale_delay_s": 4, "look_back_period_s": 12})
    opts = deployment_options(ModelManifest.model_validate(doc), gpu=False)
    auto = AutoscalingConfig.model_validate(opts["autoscaling_config"])
    assert (auto.upscale_delay_s, auto.downscale_delay_s, auto.look_back_period_s) == (1, 4, 12)
    assert auto.target_ongoing_requests == 2 and auto.max_replicas == 3


def test_autoscaled_llm_must_name_its_target() -> None:
    raw = yaml.safe_load((MODEL_REPO / "clinical-llm" / "manifest.yaml").read_text())
    llm = LLMManifest.model_validate(raw)
    assert "target_ongoing_requests" in llm.scaling.model_fields_set
    opts = deployment_options(llm, gpu=False)
    assert opts["autoscaling_config"]["target_ongoing_requests"] == 24
    del raw["scaling"]["target_ongoing_requests"]
    with pytest.raises(ValidationError, match="target_ongoing_requests"):
        LLMManifest.model_validate(raw)
