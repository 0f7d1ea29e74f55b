"""Hugging Face causal-LM checkpoint folders, checked before anything is served: transformers
knows the architecture its `config.json` names as a causal LM, the context window fits it, and
the tokenizer and chat template are there. The engines load the folder with `from_pretrained`,
so any architecture transformers (or vLLM) has works; nothing here is Llama-specific.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serving.errors import ModelLoadError
from serving.repository.json_files import read_json

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
CHAT_TEMPLATE = "chat_template.jinja"


def _json(path: Path) -> dict[str, Any]:
    return read_json(path, "Hugging Face checkpoint folder")


def context_limit(folder: Path) -> int | None:
    """The longest sequence the checkpoint's config allows, where it says so."""
    config = _json(folder / CONFIG)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


def load_causal_lm(model_dir: Path, adapter_dir: Path | None = None) -> Any:
    """Load a checkpoint folder as any transformers checkpoint; merge a PEFT adapter if given."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, attn_implementation="sdpa"
    )
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    return model.eval()


def check_checkpoint(folder: Path, context_window: int) -> None:
    """Raise a ModelLoadError naming the file and the problem, or return."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = _json(folder / CONFIG)
    model_type = config.get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(f"{folder / CONFIG}: model_type {model_type!r} is not a causal LM "
                             "this transformers release knows")
    try:
        AutoConfig.from_pretrained(str(folder))
    except Exception as exc:  # transformers raises ValueError, KeyError, OSError...
        text = " ".join(str(exc).split())[:300]
        raise ModelLoadError(f"{folder / CONFIG}: transformers cannot read it ({text})") from None
    if not (folder / WEIGHTS).is_file():
        raise ModelLoadError(f"{folder}: no {WEIGHTS} (one safetensors file is served; merge "
                             "shards with `save_pretrained(max_shard_size=...)`)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(f"{folder}: no tokenizer ({' or '.join(TOKENIZER_FILES)})")
    tokenizer_config = folder / "tokenizer_config.json"
    has_template = (folder / CHAT_TEMPLATE).is_file() or (
        tokenizer_config.is_file() and bool(_json(tokenizer_config).get("chat_template")))
    if not has_template:
        raise ModelLoadError(f"{folder}: no chat template ({CHAT_TEMPLATE}, or chat_template in "
                             "tokenizer_config.json): chats cannot be formatted")
    limit = context_limit(folder)
    if limit is not None and context_window > limit:
        raise ModelLoadError(f"{folder / CONFIG}: the engine's context_window {context_window} "
                             f"exceeds the model's {limit} positions")


def dequantize_gguf(gguf: Path, out: Path) -> None:
    """Write `gguf` as a Hugging Face checkpoint folder: weights dequantized to fp32 safetensors
    (once, so serving never reads GGUF), tokenizer and chat template from the file's metadata."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True),
        )
    except Exception as exc:  # gguf and transformers raise ValueError, KeyError, OSError...
        text = " ".join(str(exc).split())[:300]
        raise ModelLoadError(f"{gguf}: cannot read it as a causal LM ({text})") from None
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def read_lora(folder: Path) -> dict[str, Any]:
    """A PEFT LoRA adapter folder's rank, alpha and target modules."""
    config = _json(folder / ADAPTER_CONFIG)
    if config.get("peft_type") != "LORA":
        raise ModelLoadError(f"{folder / ADAPTER_CONFIG}: peft_type "
                             f"{config.get('peft_type')!r}: only LoRA adapters are served")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise ModelLoadError(f"{folder}: no {ADAPTER_WEIGHTS}")
    modules = config.get("target_modules")
    if not isinstance(modules, list) or not modules:
        raise ModelLoadError(f"{folder / ADAPTER_CONFIG}: target_modules must list the layers")
    return {"rank": int(config["r"]), "alpha": int(config["lora_alpha"]),
            "target_modules": sorted(str(m) for m in modules)}


def check_adapter_fits(base: Path, adapter: Path) -> None:
    """Load the adapter onto its base, as a replica does: a LoRA made for another base (other
    layer names or sizes) fails here, named, instead of at the first request."""
    try:
        load_causal_lm(base, adapter)
    except Exception as exc:  # peft raises RuntimeError (sizes), ValueError (modules)...
        text = " ".join(str(exc).split())[:300]
        raise ModelLoadError(f"{adapter}: does not fit the base model in {base} ({text})") \
            from None
