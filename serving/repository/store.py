"""The model repository on disk: `model_repo/<name>/manifest.yaml` plus `<name>/<version>/`.

Loading validates every manifest up front; `check()` also verifies every weights file against
its manifest checksum, which is what `medserve models check` and each replica at start-up use.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import ValidationError

from serving.errors import ModelLoadError
from serving.repository.checksums import sha256_file
from serving.repository.hf_checkpoint import check_checkpoint
from serving.repository.lora_training import TrainingJob, recorded_sha256
from serving.repository.monai_bundle import load_bundle_network
from serving.repository.onnx_graph import check_onnx
from serving.schema.cluster import ClusterConfig
from serving.schema.imaging import ModelManifest, ModelVersion

if TYPE_CHECKING:
    from serving.schema.llm import LLMManifest

MANIFEST = "manifest.yaml"
DEFAULT_REPO = Path(os.environ.get("MEDSERVE_MODEL_REPO", "model_repo"))
DEFAULT_CLUSTER_CONFIG = Path(os.environ.get("MEDSERVE_CONFIG", "medserve.yaml"))

ChecksumStatus = Literal["ok", "missing", "mismatch"]


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"{path}: cannot read YAML ({type(exc).__name__})") from None


def describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    return f"{where}: {first['msg']}"


@dataclass(frozen=True)
class Checked:
    """One checksummed file of an LLM: base weights, tokenizer or an adapter."""

    label: str
    path: Path
    sha256: str | None  # None: a trained adapter whose training run has not recorded one yet
    built: bool  # `medserve build-weights` makes it (from a packaged GGUF, or by training)
    adapter: str | None = None  # the adapter's name, for an adapter's weights


@dataclass(frozen=True)
class Repository:
    root: Path
    models: dict[str, ModelManifest]  # imaging models
    llms: dict[str, LLMManifest] = field(default_factory=dict)

    def manifest(self, name: str) -> ModelManifest:
        return self.models[name]

    @property
    def all_manifests(self) -> dict[str, ModelManifest | LLMManifest]:
        """Every model by name: imaging, then LLMs."""
        return {**self.models, **self.llms}

    def version_dir(self, name: str, version: str) -> Path:
        return self.root / name / version

    def weights_path(self, name: str, version: ModelVersion) -> Path:
        return self.version_dir(name, version.version) / version.weights.file

    def checksum_status(self, name: str, version: ModelVersion) -> ChecksumStatus:
        path = self.weights_path(name, version)
        if not path.is_file():
            return "missing"
        return "ok" if sha256_file(path) == version.weights.sha256 else "mismatch"

    def iter_versions(self) -> Iterator[tuple[ModelManifest, ModelVersion]]:
        for manifest in self.models.values():
            for version in manifest.versions:
                yield manifest, version

    def verify(self, name: str, version: ModelVersion) -> Path:
        """Return the weights path, or raise if the file is missing or its checksum differs."""
        status = self.checksum_status(name, version)
        path = self.weights_path(name, version)
        if status == "missing":
            raise ModelLoadError(
                f"{name} version {version.version}: weights file {path} is missing"
                " (run `medserve build-weights` for demo weights)"
            )
        if status == "mismatch":
            raise ModelLoadError(
                f"{name} version {version.version}: {path} does not match the manifest sha256"
            )
        return path

    def llm_files(self, name: str, version: str | None = None) -> list[Checked]:
        """Checksummed files of an LLM version (default: served): weights, tokenizer, adapters."""
        m = self.llms[name]
        v = m.version(version or m.served_version)
        base = self.version_dir(name, v.version)
        built = v.gguf is not None
        files = [Checked(f"{name} {v.version} weights", base / v.weights.file, v.weights.sha256,
                         built)]
        if v.tokenizer_sha256 is not None:
            files.append(Checked(f"{name} {v.version} tokenizer", base / "tokenizer.json",
                                 v.tokenizer_sha256, built))
        for a in m.adapters:
            path, sha = base / a.weights.file, a.weights.sha256
            if sha is None and a.train is not None:
                job = TrainingJob.of(m, self.root / name, a, v.weights.sha256)
                sha = recorded_sha256(path, job.recipe())
            files.append(Checked(f"{name}:{a.name} adapter", path, sha, a.train is not None,
                                 a.name))
        return files

    def iter_llm_files(self) -> Iterator[tuple[LLMManifest, str, Checked]]:
        for m in self.llms.values():
            for v in m.versions:
                for f in self.llm_files(m.name, v.version):
                    yield m, v.version, f

    @staticmethod
    def file_status(f: Checked) -> ChecksumStatus:
        if not f.path.is_file() or f.sha256 is None:
            return "missing"
        return "ok" if sha256_file(f.path) == f.sha256 else "mismatch"

    @classmethod
    def verify_file(cls, f: Checked) -> Path:
        status = cls.file_status(f)
        fix = "run `medserve build-weights`" if f.built else "import it again"
        if status == "missing":
            what = "has no training record" if f.path.is_file() else "is missing"
            raise ModelLoadError(f"{f.label}: {f.path} {what} ({fix})")
        if status == "mismatch":
            raise ModelLoadError(f"{f.label}: {f.path} does not match its sha256 ({fix})")
        return f.path

    def with_backends(self, backends: Mapping[str, str]) -> Repository:
        """This repository with some imaging models on another backend than their manifest
        names (a cluster's choice, e.g. Triton on GPU nodes), each re-validated."""
        unknown = sorted(set(backends) - set(self.models))
        if unknown:
            raise ModelLoadError(f"backends: not imaging models here: {', '.join(unknown)}")
        models = dict(self.models)
        for name, backend in backends.items():
            try:
                models[name] = ModelManifest.model_validate(
                    {**models[name].model_dump(), "backend": backend}
                )
            except ValidationError as exc:
                raise ModelLoadError(f"{name} with backend {backend}: {describe(exc)}") from None
        return replace(self, models=models)

    def only(self, *names: str) -> Repository:
        """This repository with the named models only (imaging or LLM)."""
        return replace(self, models={n: m for n, m in self.models.items() if n in names},
                       llms={n: m for n, m in self.llms.items() if n in names})

    def check(self) -> None:
        """Raise on the first manifest or weights problem: checksums, and for files that carry
        their own graph, that it loads here (an ONNX graph valid, runnable and as declared; a
        MONAI bundle's network built and its weights loaded; an LLM checkpoint's architecture,
        tokenizer and chat template)."""
        for manifest, version in self.iter_versions():
            path = self.verify(manifest.name, version)
            if version.weights.format == "onnx":
                check_onnx(path, manifest.inputs, manifest.outputs)
            elif version.weights.format == "monai_bundle":
                load_bundle_network(path.parents[1], path, "cpu")
        for _, _, f in self.iter_llm_files():
            self.verify_file(f)
        for llm in self.llms.values():
            for v in llm.versions:  # any causal LM transformers knows, with its tokenizer
                check_checkpoint(self.version_dir(llm.name, v.version), llm.engine.context_window)


def load_manifest(path: Path) -> ModelManifest | LLMManifest:
    """Validate a manifest with the schema its `kind` names (imaging when absent)."""
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: a manifest must be a YAML mapping")
    kind = raw.get("kind", "imaging")
    try:
        manifest: ModelManifest | LLMManifest
        if kind == "llm":
            from serving.schema.llm import LLMManifest

            manifest = LLMManifest.model_validate(raw)
        elif kind == "imaging":
            manifest = ModelManifest.model_validate(raw)
        else:
            raise ModelLoadError(f"{path}: kind must be imaging or llm")
    except ValidationError as exc:
        raise ModelLoadError(f"{path}: {describe(exc)}") from None
    if manifest.name != path.parent.name:
        raise ModelLoadError(
            f"{path}: name {manifest.name!r} differs from its folder {path.parent.name!r}"
        )
    return manifest


def load_repository(root: Path = DEFAULT_REPO) -> Repository:
    root = Path(root).resolve()
    if not root.is_dir():
        raise ModelLoadError(f"model repository {root} does not exist")
    models: dict[str, ModelManifest] = {}
    llms: dict[str, LLMManifest] = {}
    for path in sorted(root.glob(f"*/{MANIFEST}")):
        manifest = load_manifest(path)
        if isinstance(manifest, ModelManifest):
            models[manifest.name] = manifest
        else:
            llms[manifest.name] = manifest
    if not models and not llms:
        raise ModelLoadError(f"model repository {root} holds no */{MANIFEST}")
    return Repository(root=root, models=models, llms=llms)


def load_cluster_config(path: Path | None = DEFAULT_CLUSTER_CONFIG) -> ClusterConfig:
    """Read the cluster config; a missing default file means all defaults."""
    if path is None or (path == DEFAULT_CLUSTER_CONFIG and not path.exists()):
        return ClusterConfig()
    raw = _read_yaml(Path(path)) or {}
    try:
        return ClusterConfig.model_validate(raw)
    except ValidationError as exc:
        raise ModelLoadError(f"{path}: {describe(exc)}") from None
