"""Manifest schema of a clinical LLM: base checkpoint, tokenizer, adapters, engine, SLO.

The checkpoint is a Hugging Face causal-LM folder of any architecture transformers knows
(serving/repository/hf_checkpoint.py checks it); `architecture` and `tokenizer` describe the
Llama demo that `medserve build-weights` makes from a seed, one case rather than the rule.

An LLM manifest says `kind: llm`; the repository loader picks this schema by that key, and
unknown keys are errors here exactly as for imaging manifests.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from serving.schema.base import NAME, SHA256, ManifestBase, ModelVersion, Strict, Weights


class LlamaArchitecture(Strict):
    name: Literal["llama"] = Field(description="Causal LM family (transformers LlamaForCausalLM).")
    hidden_size: int = Field(ge=8, description="Model width.")
    intermediate_size: int = Field(ge=8, description="MLP width.")
    num_hidden_layers: int = Field(ge=1, description="Decoder layers.")
    num_attention_heads: int = Field(ge=1, description="Query heads.")
    num_key_value_heads: int = Field(ge=1, description="Key/value heads (GQA when fewer).")
    max_position_embeddings: int = Field(ge=16, description="Longest sequence the model takes.")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base frequency.")
    init_std: float = Field(0.02, gt=0, description="Std of the demo weights' normal init.")

    @model_validator(mode="after")
    def _heads(self) -> LlamaArchitecture:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        return self


class TokenizerSpec(Strict):
    corpus: str = Field("corpus.txt", description="Training text, relative to the model folder.")
    vocab_size: int = Field(ge=300, description="Target BPE vocabulary size (byte-level).")
    chat_template: str = Field(
        "chat_template.jinja", description="Jinja chat template, relative to the model folder."
    )
    special_tokens: list[str] = Field(
        ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"],
        description="Added special tokens; the first is padding, the second ends a turn (EOS).",
    )


class LLMVersion(ModelVersion):
    tokenizer_sha256: str | None = Field(
        None, description="Expected SHA-256 of tokenizer.json, when the build is reproducible."
    )

    @field_validator("tokenizer_sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and not SHA256.match(v):
            raise ValueError("tokenizer_sha256 must be 64 lowercase hex characters")
        return v


class Adapter(Strict):
    name: str = Field(description="Adapter id: clients ask for `<model>:<name>`.")
    description: str = Field(description="Specialty, for /v1/models and `medserve models`.")
    rank: int = Field(8, ge=1, le=256, description="LoRA rank r.")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scale = alpha / r).")
    target_modules: list[str] = Field(
        ["q_proj", "v_proj"], min_length=1, description="Linear layers the adapter modifies."
    )
    weights: Weights = Field(description="adapter_model.safetensors, relative to the version.")

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
    architecture: LlamaArchitecture | None = Field(
        None,
        description="The demo checkpoint `medserve build-weights` makes; omitted for a "
        "checkpoint folder, whose config.json names its architecture.",
    )
    tokenizer: TokenizerSpec | None = Field(
        None, description="How build-weights trains the demo tokenizer; omitted for a checkpoint "
        "folder, which has its own tokenizer and chat template.",
    )
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
        built = [v.version for v in self.versions if v.weights.demo_seed is not None]
        if built and (self.architecture is None or self.tokenizer is None):
            raise ValueError(f"versions {', '.join(built)} are built from a seed: name the "
                             "architecture and tokenizer")
        if (self.architecture is not None
                and self.engine.context_window > self.architecture.max_position_embeddings):
            raise ValueError("engine.context_window exceeds architecture.max_position_embeddings")
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
