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

from serving.cli.main import app
from serving.deployments.gateway import Gateway
from serving.errors import ModelLoadError, ModelNotFound
from serving.gateway.traffic import pick
from serving.repository.rollout import parse_weights, set_traffic
from serving.repository.store import load_repository
from serving.schema.imaging import ModelManifest
from serving.schema.llm import LLMManifest
from serving.topology.applications import (
    GATEWAY,
    Routing,
    deployment_options,
    model_app,
    routing,
    serve_config,
    with_model,
)
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


def _apps(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in doc["applications"]}


def test_split_goes_to_the_gateway_user_config_and_leaves_model_applications_alone(
    tmp_path: Path,
) -> None:
    repo = canary_repo(tmp_path / "repo", traffic={"1": 90, "2": 10})
    before = _apps(serve_config(str(repo), None))
    ServeDeploySchema.model_validate({"applications": list(before.values())})
    set_traffic(repo, MODEL, {"1": 100})
    after = _apps(serve_config(str(repo), None))
    (gateway,) = after["medserve"]["deployments"]
    assert gateway["name"] == GATEWAY and gateway["user_config"]["traffic"][MODEL] == {"1": 100}
    assert gateway["user_config"]["served"][MODEL] == ["1", "2"]
    # Every application's config (Serve's code version: import path, args) is unchanged, so
    # Serve restarts nothing; the gateway takes the new split in `reconfigure`.
    for name, application in after.items():
        assert application["args"] == before[name]["args"], name
    assert {model_app(MODEL, "1"), model_app(MODEL, "2")} <= set(after)


def test_a_manifest_change_rebuilds_only_the_applications_it_touches(tmp_path: Path) -> None:
    repo = canary_repo(tmp_path / "repo", traffic={"1": 90, "2": 10})
    before = _apps(serve_config(str(repo), None))
    manifest = repo / MODEL / "manifest.yaml"
    doc = yaml.safe_load(manifest.read_text())
    doc["versions"].append({**doc["versions"][-1], "version": "3"})
    manifest.write_text(yaml.safe_dump(doc))
    added = _apps(serve_config(str(repo), None))
    assert set(added) - set(before) == {model_app(MODEL, "3")}  # a version imported
    assert all(added[n]["args"] == a["args"] for n, a in before.items()), "nothing else rolls"
    manifest.write_text(manifest.read_text().replace("description: Chest", "description: CXR"))
    edited = _apps(serve_config(str(repo), None))
    changed = {n for n, a in edited.items() if a["args"] != added[n]["args"]}
    assert changed == {model_app(MODEL, v) for v in ("1", "2", "3")}  # this model's only


def test_gateway_reconfigure_swaps_the_routing_and_pins_win(tmp_path: Path) -> None:
    repo = canary_repo(tmp_path / "repo", traffic={"1": 50, "2": 50})
    # The class under Serve's ASGI ingress wrapper (whose __init__ starts the FastAPI app).
    cls = next(c for c in Gateway.func_or_class.__mro__  # type: ignore[attr-defined]
               if "reconfigure" in vars(c)
               and not inspect.iscoroutinefunction(vars(c).get("__init__")))
    gw = cls({"model_repo": str(repo)}, {})
    route = routing(load_repository(repo))
    gw.reconfigure(route.model_dump())
    seen = {gw.resolve(MODEL).version for _ in range(200)}
    assert seen == {"1", "2"}  # each with p=0.5: both missing is a 2^-199 event
    canary_off = {**route.model_dump(), "traffic": {MODEL: {"1": 100}}}
    gw.reconfigure(canary_off)
    assert gw.routing() == canary_off
    assert {gw.resolve(MODEL).version for _ in range(200)} == {"1"}
    assert {gw.resolve(MODEL, "2").version for _ in range(20)} == {"2"}  # a pin beats the split
    with pytest.raises(ModelNotFound):
        gw.resolve(MODEL, "3")
    with pytest.raises(ValueError, match="unserved"):
        gw.reconfigure({**canary_off, "traffic": {MODEL: {"3": 100}}})
    assert gw.routing() == canary_off  # a bad routing changes nothing
    unloaded = with_model(Routing.model_validate(canary_off), load_repository(repo), MODEL,
                          loaded=False)
    gw.reconfigure(unloaded.model_dump())
    with pytest.raises(ModelNotFound):
        gw.resolve(MODEL)
    assert MODEL not in gw.manifests and gw.jobs.manifests is gw.manifests


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
