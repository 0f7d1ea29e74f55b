"""OpenAI request parsing (no Ray): what the gateway hands the LLM deployment."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from serving.protocol.openai import ChatCompletionRequest


def parse(**kw: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "clinical-llm", "messages": [{"role": "user", "content": "hi"}], **kw})


def test_defaults_follow_openai_and_stop_becomes_a_list() -> None:
    r = parse().for_engine()
    assert r["temperature"] == 1.0 and r["top_p"] == 1.0 and r["max_tokens"] is None
    assert r["stop"] == [] and parse(stop="END").for_engine()["stop"] == ["END"]


def test_developer_role_and_content_parts_become_plain_messages() -> None:
    r = parse(messages=[
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ], max_completion_tokens=7).for_engine()
    assert r["messages"] == [{"role": "system", "content": "be brief"},
                             {"role": "user", "content": "a\nb"}]
    assert r["max_tokens"] == 7


@pytest.mark.parametrize("bad", [
    {"stop": ["a", "b", "c", "d", "e"]}, {"stop": [""]}, {"n": 2}, {"temperature": -1},
    {"top_p": 1.5}, {"max_tokens": 0}, {"messages": []}, {"logit_bias": {"1": 5}},
    {"messages": [{"role": "tool", "content": "x"}]}, {"presence_penalty": 0.5},
])
def test_unsupported_or_invalid_parameters_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        parse(**bad)


def test_a_lone_surrogate_is_a_validation_error_not_a_tokenizer_crash() -> None:
    body = '{"model": "clinical-llm", "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    with pytest.raises(ValidationError, match="lone surrogate"):  # as FastAPI parses bodies
        ChatCompletionRequest.model_validate(json.loads(body))
    with pytest.raises(ValidationError, match="lone surrogate"):
        parse(stop=["\ud800"])


def test_error_bodies_do_not_echo_a_clients_unknown_keys() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from serving.http.error_map import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest) -> dict[str, str]:
        return {"model": body.model}

    answer = TestClient(app).post("/v1/chat/completions", json={
        "model": "clinical-llm", "messages": [{"role": "user", "content": "hi"}],
        "patient_jane_doe": 1})
    assert answer.status_code == 400
    message = answer.json()["error"]["message"]
    assert "jane" not in message and "(unknown field)" in message


def test_a_prompt_longer_than_any_context_window_is_refused_before_tokenising() -> None:
    from serving.errors import InvalidInput
    from serving.protocol.openai import CHARS_PER_TOKEN

    window = 512
    fits = parse(messages=[{"role": "user", "content": "x" * (window * CHARS_PER_TOKEN)}])
    fits.check_prompt_size(window)
    huge = parse(messages=[{"role": "user", "content": "x" * (1 << 20)}])  # the 1 MB probe
    with pytest.raises(InvalidInput, match="too long for the model's context window of 512"):
        huge.check_prompt_size(window)
