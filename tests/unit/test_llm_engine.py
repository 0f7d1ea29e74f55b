"""The CPU engine and the chat layer on the real demo checkpoint, without Ray.

Asserts behaviour, not fixed strings: greedy decoding matches plain `generate()`, a seeded
sample is reproducible whatever shares its batch, adapters change the output, and a closed
stream frees its batch slot.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from serving.errors import InvalidInput
from serving.llm.chat import ChatRequest, ChatService
from serving.llm.transformers_engine import TransformersEngine, in_own_thread, load_causal_lm
from serving.repository.store import load_repository
from tests.conftest import MODEL_REPO

LLM = "clinical-llm"
QUESTION = [{"role": "user", "content": "A 64-year-old man presents with haemoptysis."}]


@pytest.fixture(scope="module")
def service() -> Iterator[ChatService]:
    repo = load_repository(MODEL_REPO)
    manifest = repo.llms[LLM]
    model_dir = repo.version_dir(LLM, manifest.served_version)
    adapters = {a.name: (model_dir / a.weights.file).parent for a in manifest.adapters}
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    engine = TransformersEngine(model_dir, adapters, manifest.engine,
                                int(tokenizer.eos_token_id), threads=1)
    yield ChatService(manifest, tokenizer, engine)
    engine.shutdown()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def reply(service: ChatService, request: ChatRequest, rid: str,
                adapter: object = None) -> tuple[str, dict[str, Any]]:
    text, end = [], {}
    async for event in service.stream(rid, request, adapter):
        if event["type"] == "delta":
            text.append(event["text"])
        elif event["type"] == "end":
            end = event
    return "".join(text), end


def test_greedy_matches_plain_generate(service: ChatService) -> None:
    request = ChatRequest(messages=QUESTION, max_tokens=12, temperature=0.0)
    text, end = run(reply(service, request, "greedy"))
    prompt = service.encode(QUESTION)
    model = load_causal_lm(service.engine.model_dir)  # type: ignore[attr-defined]
    with torch.inference_mode():
        x = torch.tensor([prompt])
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12,
                             do_sample=False, eos_token_id=service.tokenizer.eos_token_id)
    expected = service.tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)
    assert text == expected
    assert end["prompt_tokens"] == len(prompt)
    assert end["completion_tokens"] == out.shape[1] - len(prompt)


def test_seeded_sampling_is_reproducible_under_batching(service: ChatService) -> None:
    def sampled(seed: int) -> ChatRequest:
        return ChatRequest(messages=QUESTION, max_tokens=10, temperature=1.0, seed=seed)

    async def batch() -> list[str]:
        # The same seeded request three times, batched with a greedy one and another seed.
        results = await asyncio.gather(
            *(reply(service, sampled(7), f"s{i}") for i in range(3)),
            reply(service, ChatRequest(messages=QUESTION, max_tokens=10, temperature=0.0), "g"),
            reply(service, sampled(8), "other"),
        )
        return [t for t, _ in results]

    first, second = run(batch()), run(batch())
    assert first[0] == first[1] == first[2] == second[0]
    assert first[4] == second[4] and first[4] != first[0]


def test_adapters_change_the_output(service: ChatService) -> None:
    question = [{"role": "user", "content": "What does a raised PSA mean?"}]
    request = ChatRequest(messages=question, max_tokens=24, temperature=0.0)

    async def both() -> tuple[str, str, str]:
        lung = await service.engine.load_adapter("lung-oncology")
        gi = await service.engine.load_adapter("gi-oncology")
        base, _ = await reply(service, request, "base")
        a, _ = await reply(service, request, "lung", lung)
        b, _ = await reply(service, request, "gi", gi)
        await service.engine.unload_adapter(lung)
        await service.engine.unload_adapter(gi)
        return base, a, b

    base, lung, gi = run(both())
    assert len({base, lung, gi}) == 3


def test_closing_a_stream_frees_its_slot(service: ChatService) -> None:
    async def scenario() -> tuple[int, int]:
        long = ChatRequest(messages=QUESTION, max_tokens=400, temperature=0.0)
        events: AsyncIterator[dict[str, Any]] = service.stream("abandoned", long)
        async for event in events:
            if event["type"] == "delta":
                break
        running_before = service.engine.stats().running
        await events.aclose()  # type: ignore[attr-defined]
        # Cancellations are applied before the next step is scheduled, so once a later request
        # has finished, the abandoned one must be gone.
        await reply(service, ChatRequest(messages=QUESTION, max_tokens=2), "after")
        return running_before, service.engine.stats().running

    before, after = run(scenario())
    assert before == 1 and after == 0


def test_context_window_is_enforced_before_generation(service: ChatService) -> None:
    limit = service.manifest.engine.context_window
    with pytest.raises(InvalidInput, match=str(limit)):
        service.plan(ChatRequest(messages=[{"role": "user", "content": "biopsy " * limit}]))
    with pytest.raises(InvalidInput, match="max_tokens"):
        service.plan(ChatRequest(messages=QUESTION, max_tokens=limit))


def test_in_own_thread_builds_on_a_thread_that_then_ends() -> None:
    """Loops are built on a thread that ends, so it holds no OpenMP pool afterwards."""
    seen: list[threading.Thread] = []

    def build() -> int:
        seen.append(threading.current_thread())
        return 42

    assert in_own_thread(build).result(timeout=30) == 42
    (builder,) = seen
    assert builder is not threading.current_thread()
    builder.join(timeout=30)
    assert not builder.is_alive()


def test_in_own_thread_passes_a_failure_on() -> None:
    def build() -> int:
        raise ValueError("bad checkpoint")

    with pytest.raises(ValueError, match="bad checkpoint"):
        in_own_thread(build).result(timeout=30)
