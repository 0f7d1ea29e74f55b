"""The LLM manifest, its repository checks, engine selection and vLLM options (no Ray, no GPU)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

from serving.errors import ModelLoadError
from serving.llm.engine import select_engine
from serving.llm.vllm_engine import engine_args
from serving.repository.store import load_repository
from serving.topology.applications import deployment_name, deployment_options, serve_config
from tests.conftest import MODEL_REPO

LLM = "clinical-llm"


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "model_repo"
    shutil.copytree(MODEL_REPO, dst)
    return dst


def _edit(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc))


def test_shipped_llm_manifest_loads_with_adapters_and_slo() -> None:
    repo = load_repository(MODEL_REPO)
    m = repo.llms[LLM]
    assert LLM not in repo.models  # imaging code paths never see the LLM
    assert len(m.adapters) >= 8 and len({a.name for a in m.adapters}) == len(m.adapters)
    assert m.slo.ttft_threshold_s > 0 and m.slo.itl_threshold_s > 0
    assert "decision support" in m.system_prompt.lower()
    repo.check()  # base weights, tokenizer and every adapter match their sha256


@pytest.mark.parametrize("where", ["top", "engine", "adapter"])
def test_unknown_llm_keys_are_rejected_at_load(repo_copy: Path, where: str) -> None:
    def change(doc: dict) -> None:  # type: ignore[type-arg]
        target = {"top": doc, "engine": doc["engine"], "adapter": doc["adapters"][0]}[where]
        target["colour"] = "blue"

    _edit(repo_copy / LLM / "manifest.yaml", change)
    with pytest.raises(ModelLoadError, match="colour"):
        load_repository(repo_copy)


def test_unknown_kind_and_bad_adapter_name_are_rejected(repo_copy: Path) -> None:
    path = repo_copy / LLM / "manifest.yaml"
    _edit(path, lambda d: d["adapters"][0].update(name="Bad Name"))
    with pytest.raises(ModelLoadError, match="adapters"):
        load_repository(repo_copy)
    _edit(path, lambda d: d.update(kind="speech"))
    with pytest.raises(ModelLoadError, match="kind"):
        load_repository(repo_copy)


def test_tampered_or_missing_adapter_fails_the_check(repo_copy: Path) -> None:
    repo = load_repository(repo_copy)
    adapter = repo.llms[LLM].adapters[3]
    path = repo.version_dir(LLM, "1") / adapter.weights.file
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(ModelLoadError, match=adapter.name):
        repo.check()
    path.unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        repo.check()


def test_llm_deployment_options_come_from_the_manifest() -> None:
    m = load_repository(MODEL_REPO).llms[LLM]
    opts = deployment_options(m, gpu=False)
    scaling = opts["autoscaling_config"]
    assert scaling["target_ongoing_requests"] == m.scaling.target_ongoing_requests
    assert opts["max_ongoing_requests"] == m.scaling.max_ongoing_requests
    assert opts["ray_actor_options"]["num_gpus"] == 0
    assert deployment_options(m, gpu=True)["ray_actor_options"]["num_gpus"] == m.resources.gpus
    doc = serve_config(str(MODEL_REPO), None, "local")
    names = [d["name"] for a in doc["applications"] for d in a["deployments"]]
    assert deployment_name(LLM, m.served_version) in names


@pytest.mark.parametrize(
    ("requested", "gpu", "vllm", "expected"),
    [("auto", False, True, "transformers"), ("auto", True, True, "vllm"),
     ("auto", True, False, "transformers"), ("transformers", True, True, "transformers"),
     ("vllm", True, True, "vllm")],
)
def test_engine_selection(requested: str, gpu: bool, vllm: bool, expected: str) -> None:
    assert select_engine(requested, gpu, vllm) == expected


def test_vllm_is_refused_without_a_gpu_and_never_imported_on_cpu() -> None:
    with pytest.raises(ValueError, match="GPU"):
        select_engine("vllm", False)
    with pytest.raises(ValueError, match="vllm package"):
        select_engine("vllm", True, vllm_installed=False)
    import serving.deployments.llm  # noqa: F401  (the deployment module imports no engine)

    assert "vllm" not in sys.modules


def test_vllm_engine_args_follow_the_manifest() -> None:
    m = load_repository(MODEL_REPO).llms[LLM]
    args = engine_args(Path("/models/x"), m.engine, enable_lora=True)
    assert args["max_model_len"] == m.engine.context_window
    assert args["enable_lora"] and args["max_loras"] == m.engine.vllm.max_loras
    assert args["max_lora_rank"] >= max(a.rank for a in m.adapters)
    assert "enable_lora" not in engine_args(Path("/models/x"), m.engine, enable_lora=False)
