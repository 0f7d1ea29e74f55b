"""A Hugging Face checkpoint of another architecture than the demo's Llama (Qwen2, tiny
config, random weights, saved with `save_pretrained`): imported with `medserve models
import`, checked, and served by the CPU engine exactly as `generate()` runs it (no Ray)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
from typer.testing import CliRunner

from serving.cli.main import app
from serving.errors import ModelLoadError
from serving.llm.chat import ChatRequest, ChatService
from serving.llm.transformers_engine import TransformersEngine
from serving.repository.hf_checkpoint import load_causal_lm
from serving.repository.importer import ImportOptions, import_model
from serving.repository.store import load_repository
from tests.conftest import MODEL_REPO

INTENDED = "Decision support for clinicians drafting notes; the clinician makes the decision."
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
QUESTION = [{"role": "user", "content": "Summarise the staging of a lung nodule."}]


def tiny_qwen2(folder: Path) -> Path:
    """A real Qwen2 checkpoint folder: config, safetensors weights, tokenizer, chat template
    (the tokenizer files are the demo LLM's, built by `medserve build-weights`)."""
    demo = load_repository(MODEL_REPO)
    llm = demo.llms["clinical-llm"]
    source = demo.version_dir(llm.name, llm.served_version)
    folder.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, folder / name)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(str(folder))
    return folder


def test_a_qwen2_checkpoint_is_imported_and_served_like_generate(tmp_path: Path) -> None:
    folder = tiny_qwen2(tmp_path / "qwen2-tiny")
    repo = tmp_path / "repo"
    args = ["models", "import", str(folder), "--name", "tiny-qwen", "--repo", str(repo)]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and "no intended-use statement" in refused.output
    done = CliRunner().invoke(app, [*args, "--intended-use", INTENDED])
    assert done.exit_code == 0, done.output

    loaded = load_repository(repo)
    manifest = loaded.llms["tiny-qwen"]
    assert manifest.intended_use == INTENDED
    model_dir = loaded.version_dir("tiny-qwen", manifest.served_version)
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == "qwen2"

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    engine = TransformersEngine(model_dir, {}, manifest.engine, int(tokenizer.eos_token_id),
                                threads=1)
    try:
        service = ChatService(manifest, tokenizer, engine)

        async def reply() -> tuple[str, dict]:
            text, end = [], {}
            request = ChatRequest(messages=QUESTION, max_tokens=10, temperature=0.0)
            async for event in service.stream("q", request, None):
                if event["type"] == "delta":
                    text.append(event["text"])
                elif event["type"] == "end":
                    end = event
            return "".join(text), end

        text, end = asyncio.run(reply())
        prompt = service.encode(QUESTION)
        model = Qwen2ForCausalLM.from_pretrained(str(model_dir)).eval()
        with torch.inference_mode():
            x = torch.tensor([prompt])
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=10,
                                 do_sample=False, eos_token_id=tokenizer.eos_token_id)
        assert text == tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)
        assert end["completion_tokens"] == out.shape[1] - len(prompt)
    finally:
        engine.shutdown()


def test_broken_checkpoints_are_refused_with_the_file_named(tmp_path: Path) -> None:
    options = ImportOptions(name="chat", intended_use=INTENDED)
    repo = tmp_path / "repo"
    no_template = tiny_qwen2(tmp_path / "no-template")
    (no_template / "chat_template.jinja").unlink()
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="no chat template"):
        import_model(repo, no_template, options)

    unknown = tiny_qwen2(tmp_path / "unknown")
    config = json.loads((unknown / "config.json").read_text())
    config["model_type"] = "not-a-model"
    (unknown / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"config\.json: model_type 'not-a-model' is not"):
        import_model(repo, unknown, options)

    no_tokenizer = tiny_qwen2(tmp_path / "no-tokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        import_model(repo, no_tokenizer, options)
    assert not (repo / "chat").exists()


def lora(base: Path, out: Path, seed: int = 1) -> Path:
    """A PEFT LoRA adapter of `base`, with non-zero weights so it changes the output."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM.from_pretrained(str(base))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(str(out))
    return out


def test_a_peft_adapter_is_imported_onto_its_base_and_a_foreign_one_refused(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    base = tiny_qwen2(tmp_path / "qwen2-tiny")
    import_model(repo, base, ImportOptions(name="tiny-qwen", intended_use=INTENDED))
    adapter = lora(base, tmp_path / "notes-lora")
    done = CliRunner().invoke(app, ["models", "import", str(adapter), "--name",
                                    "tiny-qwen:notes", "--repo", str(repo)])
    assert done.exit_code == 0, done.output
    loaded = load_repository(repo)
    loaded.check()
    (entry,) = loaded.llms["tiny-qwen"].adapters
    assert (entry.name, entry.rank, entry.alpha) == ("notes", 4, 8)
    assert sorted(entry.target_modules) == ["q_proj", "v_proj"]  # PEFT stores a set
    model_dir = loaded.version_dir("tiny-qwen", "1")
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        plain = load_causal_lm(model_dir)(x).logits
        tuned = load_causal_lm(model_dir, model_dir / "adapters" / "notes")(x).logits
    assert not torch.allclose(plain, tuned)  # the adapter is applied

    # A LoRA made for a wider model of the same family does not fit this base.
    wide_folder = tmp_path / "qwen2-wide"
    wide_folder.mkdir()
    config = Qwen2ForCausalLM.from_pretrained(str(base)).config
    config.hidden_size, config.intermediate_size = 48, 96
    Qwen2ForCausalLM(config).save_pretrained(str(wide_folder))
    foreign = lora(wide_folder, tmp_path / "foreign-lora")
    with pytest.raises(ModelLoadError, match="does not fit the base model"):
        import_model(repo, foreign, ImportOptions(name="tiny-qwen:foreign"))
    assert not (model_dir / "adapters" / "foreign").exists()
    assert [a.name for a in load_repository(repo).llms["tiny-qwen"].adapters] == ["notes"]
