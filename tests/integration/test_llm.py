"""The clinical LLM through the official `openai` client, against a real Medserve.

Behaviour, not fixed strings: at temperature 0 a streamed reply equals the non-streamed one,
usage equals the tokenizer's own counts, adapters change the reply, and errors have OpenAI's
shape and status codes.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from serving.observability.metrics import (
    LLM_ADAPTER_LOADS,
    LLM_ADAPTERS_LOADED,
    LLM_DURATION,
    LLM_RUNNING,
    LLM_WAITING,
    NONE,
)
from serving.repository.store import load_repository
from tests.conftest import MODEL_REPO, Server
from tests.integration.harness import metric_total, ready_replicas
from tests.prom import ensure, eventually

LLM = "clinical-llm"
MESSAGES = [{"role": "user", "content": "A 71-year-old former smoker has a lung nodule."}]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def manifest() -> Any:
    return load_repository(MODEL_REPO).llms[LLM]


@pytest.fixture(scope="module")
def tokenizer(manifest: Any) -> Any:
    return AutoTokenizer.from_pretrained(str(MODEL_REPO / LLM / manifest.served_version))


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                         timeout=120)


def complete(client: openai.OpenAI, model: str = LLM, **kw: Any) -> Any:
    params: dict[str, Any] = {"max_tokens": MAX_TOKENS, "temperature": 0, "seed": 1, **kw}
    return client.chat.completions.create(model=model, messages=MESSAGES, **params)


def streamed(client: openai.OpenAI, model: str = LLM, **kw: Any) -> tuple[str, Any, Any]:
    text, usage, finish = [], None, None
    for chunk in client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0, seed=1,
        stream=True, stream_options={"include_usage": True}, **kw,
    ):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return "".join(text), usage, finish


def test_models_lists_the_base_and_every_adapter(client: openai.OpenAI, manifest: Any) -> None:
    cards = {m.id: m for m in client.models.list().data}
    assert LLM in cards
    for adapter in manifest.adapters:
        card = cards[f"{LLM}:{adapter.name}"]
        assert card.parent == LLM  # type: ignore[attr-defined]
    assert client.models.retrieve(f"{LLM}:{manifest.adapters[0].name}").id.endswith(
        manifest.adapters[0].name)


def test_plain_completion_counts_tokens_and_is_marked_decision_support(
    client: openai.OpenAI, manifest: Any, tokenizer: Any
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=LLM, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0)
    assert LLM in raw.headers["x-decision-support"]
    reply = raw.parse()
    conversation = [{"role": "system", "content": manifest.system_prompt}, *MESSAGES]
    prompt = tokenizer.apply_chat_template(conversation, add_generation_prompt=True,
                                           tokenize=True, return_dict=False)
    assert reply.usage.prompt_tokens == len(prompt)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    if reply.choices[0].finish_reason == "length":
        assert reply.usage.completion_tokens == MAX_TOKENS
    assert reply.decision_support["intended_use"] == manifest.intended_use  # type: ignore[attr-defined]


def test_streaming_equals_non_streaming(client: openai.OpenAI) -> None:
    whole = complete(client)
    text, usage, finish = streamed(client)
    assert text == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens


def test_sse_wire_format(server: Server) -> None:
    body = {"model": LLM, "messages": MESSAGES, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body,
                      timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "x-decision-support" in response.headers
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert "usage" not in chunks[-1]  # only with stream_options.include_usage


def test_adapter_changes_the_reply_and_streams_too(client: openai.OpenAI,
                                                   manifest: Any) -> None:
    base = complete(client).choices[0].message.content
    model = f"{LLM}:{manifest.adapters[0].name}"
    adapted = complete(client, model=model)
    assert adapted.model == model
    assert adapted.choices[0].message.content != base
    assert streamed(client, model=model)[0] == adapted.choices[0].message.content


def test_stop_string_and_seeded_sampling(client: openai.OpenAI) -> None:
    full = complete(client).choices[0].message.content
    if len(full) > 4:
        stop = full[2:4]
        cut = complete(client, stop=[stop])
        assert cut.choices[0].message.content == full[: full.index(stop)]
        assert cut.choices[0].finish_reason == "stop"
    a = complete(client, temperature=1.0, seed=11).choices[0].message.content
    b = complete(client, temperature=1.0, seed=11).choices[0].message.content
    assert a == b


@pytest.mark.parametrize(
    ("model", "extra", "status"),
    [
        ("no-such-model", {}, 404),
        (f"{LLM}:no-such-adapter", {}, 404),
        (LLM, {"temperature": 3}, 400),
        (LLM, {"top_p": 0}, 400),
        (LLM, {"n": 2}, 400),
        (LLM, {"max_tokens": 100_000}, 400),
    ],
)
def test_errors_have_openai_shape(client: openai.OpenAI, model: str, extra: dict[str, Any],
                                  status: int) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        complete(client, model=model, **extra)
    assert info.value.status_code == status
    body = info.value.body
    assert isinstance(body, dict) and {"message", "type", "param", "code"} <= set(body)


def test_prompt_over_the_context_window_says_the_limit(client: openai.OpenAI,
                                                       manifest: Any) -> None:
    limit = manifest.engine.context_window
    secret = "patient Jane Roe " * limit
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=LLM, messages=[{"role": "user", "content": secret}])
    assert str(limit) in info.value.message
    assert "Jane Roe" not in info.value.message


def test_concurrent_streams_each_match_their_reference(server: Server,
                                                       client: openai.OpenAI) -> None:
    prompts = [f"Case {i}: what follow-up interval is appropriate?" for i in range(6)]
    references = [
        client.chat.completions.create(
            model=LLM, messages=[{"role": "user", "content": p}], max_tokens=MAX_TOKENS,
            temperature=0,
        ).choices[0].message.content
        for p in prompts
    ]

    async def one(aclient: openai.AsyncOpenAI, prompt: str) -> str:
        parts = []
        stream = await aclient.chat.completions.create(
            model=LLM, messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS,
            temperature=0, stream=True)
        async for chunk in stream:
            parts += [c.delta.content or "" for c in chunk.choices]
        return "".join(parts)

    async def all_at_once() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused",
                                      max_retries=0, timeout=120) as aclient:
            return await asyncio.gather(*(one(aclient, p) for p in prompts))

    assert asyncio.run(all_at_once()) == references


def _llm_total(server: Server, name: str, **labels: str) -> float:
    return metric_total(server, name, model=LLM, **labels)


def _settled(server: Server, name: str, **labels: str) -> float:
    """A metric's value once Ray's export (every second here) has caught up with the requests
    already answered: two reads 2 s apart agree."""
    last = _llm_total(server, name, **labels)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(2)  # two export intervals
        now = _llm_total(server, name, **labels)
        if now == last:
            return now
        last = now
    raise AssertionError(f"{name} still moving after 60 s")


def test_client_disconnect_mid_stream_frees_its_slot(server: Server, client: openai.OpenAI) -> None:
    """Clients that walk away mid-stream cancel their generation: the engine's running
    count drops back to zero without any of them reaching its end (a finished request
    records its duration once), and the server goes on serving. The base model counts to 400
    (a reply far longer than the time the cancellation takes to arrive); tests run one at a
    time, so once the earlier tests' requests are exported its duration count moves only with
    these streams."""
    finished = f"{LLM_DURATION}_count"
    before = _settled(server, finished, adapter=NONE)
    counting = [{"role": "user", "content": "Count from 1 to 400, one number per line."}]
    body = {"model": LLM, "messages": counting, "max_tokens": 400, "stream": True,
            "temperature": 0}
    for _ in range(3):
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body,
                          timeout=120) as response:
            for line in response.iter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    break  # walk away with the reply mid-flight

    def idle() -> None:
        assert _llm_total(server, LLM_RUNNING) == 0
        assert _llm_total(server, LLM_WAITING) == 0

    eventually(idle, 120)
    assert _llm_total(server, finished, adapter=NONE) == before  # none ran to its end
    assert complete(client).choices[0].finish_reason in ("stop", "length")
    eventually(lambda: ensure(_llm_total(server, finished, adapter=NONE) == before + 1))


def test_adapters_beyond_the_replica_lru_are_evicted_and_reloaded(
    server: Server, client: openai.OpenAI, manifest: Any,
) -> None:
    """More adapters than `max_adapters_per_replica`: a replica holds that many at most,
    the least recently used one goes, and it is loaded again when asked for."""
    keep = manifest.engine.max_adapters_per_replica
    names = [a.name for a in manifest.adapters][: keep + 2]
    assert len(names) == keep + 2, "the repository needs more adapters than the LRU keeps"
    assert len(ready_replicas(server, LLM)) == 1  # one replica: every load is its own

    def ask(name: str) -> None:
        assert complete(client, f"{LLM}:{name}", max_tokens=1).choices

    def loads() -> dict[str, float]:
        return {n: metric_total(server, LLM_ADAPTER_LOADS, model=LLM, adapter=n)
                for n in names}

    for name in names:  # whatever it held before, the replica now holds the last `keep`
        ask(name)
    eventually(lambda: ensure(_llm_total(server, LLM_ADAPTERS_LOADED) == keep))
    before = loads()
    oldest_kept, newest = names[-keep], names[-1]
    for name in (names[0], newest, oldest_kept):
        ask(name)
    # names[0] was not held: loaded, evicting the least recently used (oldest_kept), which is
    # loaded again when asked for; the newest was held and is not loaded again.
    expected = {**before, names[0]: before[names[0]] + 1,
                oldest_kept: before[oldest_kept] + 1}
    eventually(lambda: ensure(loads() == expected))
    eventually(lambda: ensure(_llm_total(server, LLM_ADAPTERS_LOADED) == keep))




def test_readiness_includes_the_llm(server: Server) -> None:
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=30).status_code == 200


def test_prompts_and_stop_strings_never_reach_the_logs(server: Server,
                                                       client: openai.OpenAI) -> None:
    marker = "Quokka-Zebra-4711"
    client.chat.completions.create(
        model=LLM, messages=[{"role": "user", "content": f"Patient {marker} has a cough."}],
        max_tokens=4, stop=[marker], user=marker)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=LLM, messages=[{"role": "user", "content": f"{marker} " * 1000}])
    environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
    ray_tmp = next(v.split(b"=", 1)[1] for v in environ if v.startswith(b"RAY_TMPDIR="))
    logs = [p for p in Path(ray_tmp.decode()).rglob("*") if p.is_file() and (
        p.suffix in (".log", ".out", ".err") or "logs" in p.parts)]
    assert logs
    assert not [p for p in [*logs, server.log] if marker.encode() in p.read_bytes()]
