"""`medserve models import`: a model file from outside (a vendor's export, a research group's
checkpoint) into `model_repo/NAME/VERSION/`, with a manifest written or extended from what the
file says about itself, checksummed, and checked exactly as `medserve models check` does.

Formats are told apart by what the path is. An ONNX file carries its graph, so its tensors
come from it; task, labels, modalities, description and intended use come from the flags or
from the file's own metadata (ONNX `metadata_props` keys `task`, `labels` (a JSON list or
comma-separated), `modalities`, `description`, `intended_use`). A MONAI bundle describes
itself in `configs/metadata.json`: its tensors (`network_data_format`), labels
(`channel_def`), version and intended use; the whole bundle becomes the version folder. A
Hugging Face causal-LM folder becomes an LLM (`kind: llm`) the same way, and so does a GGUF
file, dequantized once into such a folder. A PEFT LoRA folder becomes an adapter of an LLM
already here (`--name LLM:ADAPTER`). A
model with no intended-use statement is refused: every Medserve result carries one, and a
clinician must be able to read what the model is for.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx
import yaml
from pydantic import ValidationError

from serving.errors import ModelLoadError
from serving.repository.checksums import sha256_file
from serving.repository.hf_checkpoint import (
    ADAPTER_WEIGHTS,
    WEIGHTS,
    check_adapter_fits,
    check_checkpoint,
    context_limit,
    dequantize_gguf,
    read_lora,
)
from serving.repository.monai_bundle import read_bundle
from serving.repository.onnx_graph import graph_tensors
from serving.repository.store import MANIFEST, describe, load_repository
from serving.schema.base import VERSION
from serving.schema.imaging import ModelManifest, TensorSpec
from serving.schema.llm import LLMManifest

NOT_YET: dict[str, str] = {}  # formats detected but not importable yet, and why
CONTENT_TYPES = {
    "classification": ["application/dicom", "image/png"],
    "detection": ["multipart/form-data", "application/zip"],
    "segmentation": ["multipart/form-data", "application/zip"],
}
MODALITIES = {"classification": ["CR", "DX"], "detection": ["CT"], "segmentation": ["CT"]}
# a start: tune per model
LATENCY_THRESHOLD_S = {"classification": 1.0, "detection": 10.0, "segmentation": 10.0}
# A bundle's network_data_format output "format" -> the task it is served as.
BUNDLE_TASKS = {"classes": "classification", "classification": "classification",
                "segmentation": "segmentation"}
DEFAULT_CONTEXT_WINDOW = 512  # fits the CPU engine's default KV cache; raise it with the cache
SYSTEM_PROMPT = (
    "You are a clinical decision-support assistant for licensed clinicians. Your answers are "
    "decision support only: they are not a diagnosis, they may be wrong, and the treating "
    "clinician makes the final decision. Say when information is missing."
)


@dataclass(frozen=True)
class ImportOptions:
    name: str
    version: str | None = None
    intended_use: str | None = None
    task: str | None = None
    labels: list[str] | None = None
    modalities: list[str] | None = None
    description: str | None = None
    input_shape: list[int] | None = None  # one input, without the batch axis (TorchScript)


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "configs" / "metadata.json").is_file():
            return "monai_bundle"
        if (path / "adapter_config.json").is_file():
            return "peft_adapter"
        if (path / "config.json").is_file():
            return "hf_checkpoint"
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".onnx":
            return "onnx"
        if suffix == ".gguf":
            return "gguf"
        if suffix in (".ts", ".pt", ".pth"):
            return "torchscript"
    raise ModelLoadError(f"{path}: not a model this command recognises (a .onnx, .gguf, .ts/.pt "
                         "file, or a MONAI bundle, Hugging Face or PEFT folder)")


@dataclass(frozen=True)
class Plan:
    """What an import writes: the manifest (validated with `schema`), the version label, and
    how the version folder is filled from the source."""

    doc: dict[str, Any]
    version: str
    fill: Callable[[Path], None]
    schema: type[ModelManifest] | type[LLMManifest] = ModelManifest
    folder: str | None = None  # what is written, under the model's folder (default: version)
    cleanup: Callable[[], None] = lambda: None  # what the plan made aside (a GGUF's folder)


def import_model(repo_root: Path, source: Path, options: ImportOptions) -> Path:
    """Copy `source` into the repository and write its manifest; returns the manifest path.
    On any problem nothing in the repository changes."""
    fmt = detect_format(source)
    if fmt not in PLANNERS:
        raise ModelLoadError(f"{source}: importing {NOT_YET[fmt]} is not supported yet")
    model, _, adapter = options.name.partition(":")
    if adapter and fmt != "peft_adapter":
        raise ModelLoadError("NAME:ADAPTER names an adapter; only a PEFT folder is one")
    manifest_path = repo_root / model / MANIFEST
    is_llm = fmt in ("hf_checkpoint", "gguf", "peft_adapter")
    existing = _existing(manifest_path, "llm" if is_llm else "imaging")
    plan = PLANNERS[fmt](source, options, existing)
    try:
        return _apply(plan, source, repo_root / model, manifest_path, existing is not None)
    finally:
        plan.cleanup()


def _apply(plan: Plan, source: Path, model_dir: Path, manifest_path: Path,
           extends: bool) -> Path:
    """Validate the manifest, fill the target folder, write the manifest and check the
    repository; on any problem undo all of it."""
    try:
        plan.schema.model_validate(plan.doc)
    except ValidationError as exc:
        raise ModelLoadError(f"{source}: the manifest it would get is invalid: "
                             f"{describe(exc)}") from None
    target = model_dir / (plan.folder or plan.version)
    if target.exists():
        raise ModelLoadError(f"{target} exists: choose another --version or name")
    previous = manifest_path.read_text() if extends else None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        plan.fill(target)
        manifest_path.write_text(_yaml(plan.doc))
        load_repository(model_dir.parent).check()  # what `medserve models check` runs
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        if previous is None:
            manifest_path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                manifest_path.parent.rmdir()
        else:
            manifest_path.write_text(previous)
        raise
    return manifest_path


def _onnx_plan(source: Path, o: ImportOptions, existing: dict[str, Any] | None) -> Plan:
    version = o.version or _next_version(existing)
    entry = _version(version, "model.onnx", "onnx", source)
    if existing:
        doc = _extend(existing, entry)
    else:
        inputs, outputs = graph_tensors(source)
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelLoadError(f"{source}: imaging models take one input and one output "
                                 f"tensor; the graph has {len(inputs)} and {len(outputs)}")
        found = _onnx_metadata(source)
        (x,), (y,) = inputs, outputs
        task = o.task or found.get("task") or (
            "detection" if len(y.shape) == 5 else "classification")
        doc = _new(source, o, entry, task=task, x=x, y=y,
                   labels=o.labels or split_list(found.get("labels")),
                   intended_use=o.intended_use or found.get("intended_use"),
                   description=o.description or found.get("description", ""),
                   modalities=o.modalities or split_list(found.get("modalities")))
        doc["preprocessing"] = _preprocessing(source, task, x)
    return Plan(doc, version, lambda target: _copy_file(source, target / "model.onnx"))


def _bundle_plan(source: Path, o: ImportOptions, existing: dict[str, Any] | None) -> Plan:
    info = read_bundle(source)
    taken = {str(v.get("version")) for v in (existing or {}).get("versions", [])}
    bundle_version = info.version if VERSION.match(info.version) and info.version not in taken \
        else None
    version = o.version or bundle_version or _next_version(existing)
    entry = _version(version, str(info.model_file), "monai_bundle", source / info.model_file)
    if existing:
        doc = _extend(existing, entry)
    else:
        kind = info.output.kind.lower()
        task = o.task or BUNDLE_TASKS.get(kind)
        if task is None:
            raise ModelLoadError(f"{source}: the bundle's output format {kind!r} names no task "
                                 "Medserve serves: pass --task classification, detection or "
                                 "segmentation")
        c, spatial = info.input.num_channels, info.input.spatial_shape
        x = TensorSpec(name=info.input.name, datatype="FP32", shape=[-1, c, *spatial])
        y = TensorSpec(name=info.output.name, datatype="FP32",
                       shape=[-1, info.output.num_channels])
        if task != "classification":  # a volume out, as large as the volume in
            y = TensorSpec(name=y.name, datatype="FP32",
                           shape=[1, info.output.num_channels, -1, -1, -1])
        channel_labels = list(info.output.channel_def.values())
        doc = _new(source, o, entry, task=task, x=x, y=y,
                   labels=o.labels or channel_labels or None,
                   intended_use=o.intended_use or info.intended_use,
                   description=o.description or info.description[:200],
                   modalities=o.modalities or ([info.input.modality.upper()]
                                               if info.input.modality else None))
        # MONAI bundles scale intensities to [0, 1] (ScaleIntensityd): no further shift.
        doc["preprocessing"] = {**_preprocessing(source, task, x), "mean": 0.0, "std": 1.0} \
            if task == "classification" else _preprocessing(source, task, x)
        if task != "classification":  # one volume of any size: the bundle's is the window's
            doc["inputs"] = [{**doc["inputs"][0], "shape": [1, c, -1, -1, -1]}]
            doc["outputs"] = [{**doc["outputs"][0], "shape": y.shape}]
    return Plan(doc, version, lambda target: _copy_tree(source, target))


def _torchscript_plan(source: Path, o: ImportOptions,
                      existing: dict[str, Any] | None) -> Plan:
    """A TorchScript file as the whole network (`weights.format: torchscript`, no
    architecture). The file has no tensor shapes, so a new model names its input's
    (`--input-shape`) and the output's is found by running the network once on zeros."""
    version = o.version or _next_version(existing)
    entry = _version(version, "model.ts", "torchscript", source)
    if existing:
        doc = _extend(existing, entry)
    else:
        if not o.input_shape:
            raise ModelLoadError(f"{source}: a TorchScript file does not say its input shape: "
                                 "pass --input-shape C,H,W (or C,D,H,W for CT)")
        out_shape = scripted_output_shape(source, o.input_shape)
        x = TensorSpec(name="input", datatype="FP32", shape=[-1, *o.input_shape])
        y = TensorSpec(name="output", datatype="FP32", shape=[-1, *out_shape])
        task = o.task or ("detection" if len(out_shape) == 4 else "classification")
        doc = _new(source, o, entry, task=task, x=x, y=y, labels=o.labels,
                   intended_use=o.intended_use, description=o.description or source.name,
                   modalities=o.modalities)
        doc["preprocessing"] = _preprocessing(source, task, x)
    return Plan(doc, version, lambda target: _copy_file(source, target / "model.ts"))


def scripted_output_shape(source: Path, input_shape: list[int]) -> list[int]:
    """The output shape (without batch) of a TorchScript network run once on zeros."""
    import torch

    try:
        net = torch.jit.load(str(source), map_location="cpu").eval()
        with torch.inference_mode():
            out = net(torch.zeros(1, *input_shape))
    except Exception as exc:  # torch raises RuntimeError, ValueError... for bad files/shapes
        text = " ".join(str(exc).split())[:300]
        raise ModelLoadError(f"{source}: cannot run it as TorchScript on input "
                             f"{[1, *input_shape]} ({text})") from None
    if not isinstance(out, torch.Tensor):
        raise ModelLoadError(f"{source}: the network returns {type(out).__name__}, not one "
                             "tensor")
    return list(out.shape[1:])


def _existing(path: Path, kind: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict) or raw.get("kind", "imaging") != kind:
        raise ModelLoadError(f"{path}: not an {kind} manifest; import under another --name")
    return raw


def _next_version(existing: dict[str, Any] | None) -> str:
    labels = [str(v.get("version")) for v in (existing or {}).get("versions", [])]
    numbers = [int(v) for v in labels if v.isdigit()]
    return str(max(numbers, default=0) + 1)


def _hf_plan(source: Path, o: ImportOptions, existing: dict[str, Any] | None) -> Plan:
    """A Hugging Face causal-LM folder (any architecture transformers knows) as an LLM, served
    by the engines with `from_pretrained`; its tokenizer and chat template come with it."""
    limit = context_limit(source)
    window = min(DEFAULT_CONTEXT_WINDOW, limit or DEFAULT_CONTEXT_WINDOW)
    check_checkpoint(source, window)
    version = o.version or _next_version(existing)
    entry = _version(version, WEIGHTS, "safetensors", source / WEIGHTS)
    if (source / "tokenizer.json").is_file():
        entry["tokenizer_sha256"] = sha256_file(source / "tokenizer.json")
    if existing:
        doc = _extend(existing, entry)
    else:
        intended_use = o.intended_use
        if not intended_use:
            raise ModelLoadError(f"{source}: no intended-use statement (pass --intended-use): "
                                 "every reply must say what the model is for")
        model_type = yaml.safe_load((source / "config.json").read_text()).get("model_type")
        doc = {
            "kind": "llm", "name": o.name,
            "description": o.description or f"{model_type} checkpoint",
            "versions": [entry], "default_version": version,
            "engine": {"context_window": window},
            "slo": {"ttft_threshold_s": 1.0, "itl_threshold_s": 0.25},
            "system_prompt": SYSTEM_PROMPT,
            "intended_use": " ".join(intended_use.split()),
        }
    return Plan(doc, version, lambda target: _copy_tree(source, target), LLMManifest)


def _gguf_plan(source: Path, o: ImportOptions, existing: dict[str, Any] | None) -> Plan:
    """A GGUF file, dequantized once here into a safetensors checkpoint folder (transformers
    reads GGUF with the `gguf` package), then imported as that folder."""
    folder = Path(tempfile.mkdtemp(prefix="medserve-gguf-"))
    try:
        dequantize_gguf(source, folder)
        o = replace(o, description=o.description or f"{source.name}, dequantized")
        plan = _hf_plan(folder, o, existing)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return replace(plan, cleanup=lambda: shutil.rmtree(folder, ignore_errors=True))


def _peft_plan(source: Path, o: ImportOptions, existing: dict[str, Any] | None) -> Plan:
    """A PEFT LoRA folder as a specialist adapter of an LLM already in the repository
    (`--name LLM:ADAPTER`), added to its served version and loaded onto that base once here,
    so an adapter made for another base is refused now rather than at its first request."""
    model, _, adapter = o.name.partition(":")
    if not adapter:
        raise ModelLoadError(f"{source}: a PEFT adapter is imported as --name LLM:ADAPTER")
    if existing is None:
        raise ModelLoadError(f"{source}: no LLM {model!r} in the repository: import its base "
                             "model first")
    lora = read_lora(source)
    if adapter in {a.get("name") for a in existing.get("adapters", [])}:
        raise ModelLoadError(f"{model} has an adapter {adapter!r} already")
    served = str(existing.get("default_version") or existing["versions"][-1]["version"])
    entry = {"name": adapter, "description": o.description or f"LoRA adapter {adapter}",
             **lora, "weights": {"file": f"adapters/{adapter}/{ADAPTER_WEIGHTS}",
                                 "sha256": sha256_file(source / ADAPTER_WEIGHTS)}}
    doc = {**existing, "adapters": [*existing.get("adapters", []), entry]}

    def fill(target: Path) -> None:
        shutil.copytree(source, target)
        check_adapter_fits(target.parents[1], target)

    return Plan(doc, served, fill, LLMManifest, folder=f"{served}/adapters/{adapter}")


def _version(version: str, file: str, fmt: str, source_file: Path) -> dict[str, Any]:
    return {"version": version, "weights": {"file": file, "format": fmt,
                                            "sha256": sha256_file(source_file)}}


def _extend(existing: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """A new version of a model already here: same tensors (checked against the file by the
    repository check), same task and labels."""
    return {**existing, "versions": [*existing.get("versions", []), entry]}


def _copy_tree(source: Path, dest: Path) -> None:
    shutil.copytree(source, dest)


def _copy_file(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True)
    shutil.copyfile(source, dest)


def _onnx_metadata(path: Path) -> dict[str, str]:
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def split_list(value: str | None) -> list[str] | None:
    if not value:
        return None
    text = value.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            raise ModelLoadError("metadata list is not valid JSON") from None
        return [str(i) for i in items]
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_shape(value: str | None) -> list[int] | None:
    """`C,H,W` -> [C, H, W] (positive integers)."""
    if value is None:
        return None
    try:
        dims = [int(part) for part in value.split(",")]
    except ValueError:
        dims = []
    if not dims or min(dims) < 1:
        raise ModelLoadError(f"input shape {value!r}: give positive integers separated by "
                             "commas, e.g. 1,224,224")
    return dims


def _new(
    source: Path, o: ImportOptions, entry: dict[str, Any], *, task: str, x: TensorSpec,
    y: TensorSpec, labels: list[str] | None, intended_use: str | None, description: str,
    modalities: list[str] | None,
) -> dict[str, Any]:
    """A first manifest for a model: everything but preprocessing, which depends on the
    format's own conventions."""
    if not intended_use:
        raise ModelLoadError(
            f"{source}: no intended-use statement (pass --intended-use, or set the model's "
            "`intended_use` metadata): every result must say what the model is for")
    if task not in CONTENT_TYPES:
        raise ModelLoadError(f"{source}: task must be classification or detection")
    if labels is None and task == "detection":
        labels = ["nodule"]
    if labels is None:
        raise ModelLoadError(f"{source}: no labels (pass --labels A,B,..., one per output "
                             "channel, or set the model's `labels` metadata)")
    return {
        "kind": "imaging",
        "name": o.name,
        "task": task,
        "description": description,
        "modalities": modalities or MODALITIES[task],
        "content_types": CONTENT_TYPES[task],
        "labels": labels,
        "inputs": [_batched(x)],
        "outputs": [_batched(y)],
        "versions": [entry],
        "default_version": entry["version"],
        "slo": {"latency_threshold_s": LATENCY_THRESHOLD_S[task]},
        "intended_use": " ".join(intended_use.split()),
    }


def _batched(spec: TensorSpec) -> dict[str, Any]:
    # OIP clients may send any batch: the backend cuts it to what the graph takes.
    return {"name": spec.name, "datatype": spec.datatype, "shape": [-1, *spec.shape[1:]]}


def _preprocessing(source: Path, task: str, x: TensorSpec) -> dict[str, Any]:
    spatial = x.shape[2:]
    if task == "classification":
        if len(spatial) != 2 or -1 in spatial or x.shape[1] != 1:
            raise ModelLoadError(f"{source}: a classifier here takes [batch, 1, H, W] with "
                                 f"fixed H and W; the graph takes {x.shape}")
        return {"kind": "radiograph", "spatial_size": spatial}
    if len(spatial) != 3 or x.shape[1] != 1:
        raise ModelLoadError(f"{source}: a CT detector takes [batch, 1, D, H, W]; the graph "
                             f"takes {x.shape}")
    return {"kind": "ct", **({"roi_size": spatial} if -1 not in spatial else {})}


def _yaml(doc: dict[str, Any]) -> str:
    return ("# Written by `medserve models import`; edit freely (batching, scaling, slo...).\n"
            + yaml.safe_dump(doc, sort_keys=False, width=100))


PLANNERS: dict[str, Callable[[Path, ImportOptions, dict[str, Any] | None], Plan]] = {
    "onnx": _onnx_plan,
    "torchscript": _torchscript_plan,
    "monai_bundle": _bundle_plan,
    "hf_checkpoint": _hf_plan,
    "gguf": _gguf_plan,
    "peft_adapter": _peft_plan,
}
