"""Build the demo clinical LLM into its version folder, the way a real checkpoint is laid out.

Writes a Hugging Face model folder (config.json, generation_config.json, model.safetensors,
tokenizer.json + tokenizer_config.json, chat_template.jinja) and one PEFT folder per adapter
(adapter_config.json, adapter_model.safetensors), so serving loads them with the ordinary
`from_pretrained` / `PeftModel` code a platform engineer's trained checkpoint would go through.

Weights come from numpy's PCG64 (bit-identical everywhere, like serving/repository/networks.py)
and are written with sorted keys and fixed metadata, so their sha256 in the manifest holds. The
tokenizer is trained with `tokenizers`' BPE trainer on the shipped corpus.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from serving.errors import ModelLoadError
from serving.schema.llm import Adapter, LlamaArchitecture, LLMManifest, LLMVersion, TokenizerSpec

TOKENIZER_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
ADAPTER_CONFIG = "adapter_config.json"
# Keep an adapter's effect visible on random demo weights: B starts at zero in training, but a
# demo adapter with B = 0 would be the base model under another name.
ADAPTER_STD = 0.05


def demo_spec(manifest: LLMManifest) -> tuple[LlamaArchitecture, TokenizerSpec]:
    """The demo's architecture and tokenizer recipe (the schema requires both where a version
    is built from a seed)."""
    if manifest.architecture is None or manifest.tokenizer is None:
        raise ModelLoadError(f"{manifest.name}: building needs architecture and tokenizer")
    return manifest.architecture, manifest.tokenizer


def llama_config(manifest: LLMManifest, vocab_size: int, special: dict[str, int]) -> Any:
    from transformers import LlamaConfig

    a = demo_spec(manifest)[0]
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=a.hidden_size,
        intermediate_size=a.intermediate_size,
        num_hidden_layers=a.num_hidden_layers,
        num_attention_heads=a.num_attention_heads,
        num_key_value_heads=a.num_key_value_heads,
        max_position_embeddings=a.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": a.rope_theta},
        initializer_range=a.init_std,
        tie_word_embeddings=False,
        pad_token_id=special["pad"],
        bos_token_id=None,
        eos_token_id=special["eos"],
        architectures=["LlamaForCausalLM"],
    )


def train_tokenizer(manifest: LLMManifest, model_dir: Path, out: Path) -> dict[str, int]:
    """Byte-level BPE on the corpus; returns the ids of the pad and end-of-turn tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = demo_spec(manifest)[1]
    corpus = model_dir / spec.corpus
    if not corpus.is_file():
        raise ModelLoadError(f"{corpus}: tokenizer corpus is missing")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=spec.special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(corpus)], trainer)
    pad, eos = spec.special_tokens[0], spec.special_tokens[1]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=pad, eos_token=eos,
        additional_special_tokens=spec.special_tokens[2:],
    )
    fast.chat_template = (model_dir / spec.chat_template).read_text()
    fast.save_pretrained(str(out))
    pad_id, eos_id = tok.token_to_id(pad), tok.token_to_id(eos)
    assert pad_id is not None and eos_id is not None  # added as special tokens above
    return {"pad": pad_id, "eos": eos_id, "vocab": tok.get_vocab_size()}


def demo_base_state(config: Any, seed: int) -> dict[str, torch.Tensor]:
    """Normal(0, init_std) matrices, unit RMSNorm scales, in sorted key order."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaForCausalLM(config).state_dict().items()}
    rng = np.random.Generator(np.random.PCG64(seed))
    out: dict[str, torch.Tensor] = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        if len(shape) == 1:
            arr = np.ones(shape, dtype=np.float32)
        else:
            std = np.float32(config.initializer_range)
            arr = rng.standard_normal(shape, dtype=np.float32) * std
        out[name] = torch.from_numpy(arr).contiguous()
    return out


def demo_adapter_state(config: Any, adapter: Adapter, seed: int) -> dict[str, torch.Tensor]:
    """LoRA A and B for every targeted projection, keyed as PEFT saves them."""
    rng = np.random.Generator(np.random.PCG64(seed))
    head_dim = config.hidden_size // config.num_attention_heads
    dims = {
        "q_proj": (config.hidden_size, config.num_attention_heads * head_dim),
        "k_proj": (config.hidden_size, config.num_key_value_heads * head_dim),
        "v_proj": (config.hidden_size, config.num_key_value_heads * head_dim),
        "o_proj": (config.num_attention_heads * head_dim, config.hidden_size),
        "gate_proj": (config.hidden_size, config.intermediate_size),
        "up_proj": (config.hidden_size, config.intermediate_size),
        "down_proj": (config.intermediate_size, config.hidden_size),
    }
    out: dict[str, torch.Tensor] = {}
    for layer in range(config.num_hidden_layers):
        for module in adapter.target_modules:
            if module not in dims:
                raise ModelLoadError(f"adapter {adapter.name}: unknown target module {module!r}")
            block = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
            d_in, d_out = dims[module]
            bound = 1.0 / np.sqrt(d_in)  # kaiming-uniform bound PEFT uses for A
            a = rng.uniform(-bound, bound, size=(adapter.rank, d_in)).astype(np.float32)
            b = (rng.standard_normal((d_out, adapter.rank)) * ADAPTER_STD).astype(np.float32)
            out[f"{prefix}.lora_A.weight"] = torch.from_numpy(a)
            out[f"{prefix}.lora_B.weight"] = torch.from_numpy(b)
    return dict(sorted(out.items()))


def write_adapter_config(adapter: Adapter, base_dir: Path, out: Path) -> None:
    from peft import LoraConfig

    LoraConfig(
        r=adapter.rank, lora_alpha=adapter.alpha, target_modules=list(adapter.target_modules),
        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        base_model_name_or_path=str(base_dir),
    ).save_pretrained(str(out))


def build_version(
    manifest: LLMManifest, model_dir: Path, version: LLMVersion,
    only_missing: set[str] | None = None,
) -> list[Path]:
    """Build the base checkpoint, tokenizer and adapters of one version; return files written.

    `only_missing` names the files (relative to the version folder) that need building; the
    tokenizer and configs are always rewritten because the base weights' shape depends on them.
    """
    out = model_dir / version.version
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    special = train_tokenizer(manifest, model_dir, out)
    shutil.copyfile(model_dir / demo_spec(manifest)[1].chat_template, out / CHAT_TEMPLATE_FILE)
    config = llama_config(manifest, special["vocab"], special)
    config.save_pretrained(str(out))
    _generation_config(config).save_pretrained(str(out))
    if only_missing is None or version.weights.file in only_missing:
        if version.weights.demo_seed is None:
            raise ModelLoadError(f"{manifest.name} {version.version}: no demo_seed; supply weights")
        path = out / version.weights.file
        save_file(demo_base_state(config, version.weights.demo_seed), str(path),
                  metadata={"format": "pt"})
        written.append(path)
    for adapter in manifest.adapters:
        path = out / adapter.weights.file
        if only_missing is not None and adapter.weights.file not in only_missing:
            continue
        if adapter.weights.demo_seed is None:
            raise ModelLoadError(f"adapter {adapter.name}: no demo_seed; supply weights")
        path.parent.mkdir(parents=True, exist_ok=True)
        state = demo_adapter_state(config, adapter, adapter.weights.demo_seed)
        save_file(state, str(path), metadata={"format": "pt"})
        write_adapter_config(adapter, out, path.parent)
        written.append(path)
    return written


def _generation_config(config: Any) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, do_sample=False
    )


def build_llm(repo: Any, name: str, force: bool = False) -> list[Path]:
    """Build what is missing or stale (everything with `force`) and verify every checksum."""
    manifest: LLMManifest = repo.llms[name]
    written: list[Path] = []
    for version in manifest.versions:
        if version.weights.demo_seed is None:
            continue  # a real checkpoint is delivered (or imported), not built
        files = repo.llm_files(name, version.version)
        base = repo.version_dir(name, version.version)
        stale = {str(f.path.relative_to(base)) for f in files if repo.file_status(f) != "ok"}
        if not force and not stale:
            continue
        written += build_version(manifest, repo.root / name, version, None if force else stale)
        for f in files:
            repo.verify_file(f)
    return written
