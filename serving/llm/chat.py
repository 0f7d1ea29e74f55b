"""Chat requests over any engine: system prompt, chat template, context window, stop strings.

This is the part both engines share, so a reply is the same text and the same token counts on
CPU and GPU. It yields small plain events (dicts, cheap to send between Serve replicas); the
OpenAI wire shape is the API layer's job.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from serving.errors import InvalidInput
from serving.llm.engine import Engine, SamplingParams
from serving.llm.text import TextStream
from serving.schema.llm import LLMManifest


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat request, as the gateway hands it to the LLM deployment."""

    messages: list[dict[str, str]]
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


def start_event(prompt_tokens: int) -> dict[str, Any]:
    return {"type": "start", "prompt_tokens": prompt_tokens}


class ChatService:
    def __init__(self, manifest: LLMManifest, tokenizer: Any, engine: Engine) -> None:
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.engine = engine

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the templated conversation, the manifest's system prompt first."""
        conversation = [{"role": "system", "content": self.manifest.system_prompt}, *messages]
        ids = self.tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return [int(i) for i in ids]

    def plan(self, request: ChatRequest) -> tuple[list[int], SamplingParams]:
        """Prompt ids and sampling parameters, or 400 when the context window cannot hold them."""
        spec = self.manifest.engine
        limit = spec.context_window
        prompt = self.encode(request.messages)
        used = len(prompt)
        if used >= limit:
            raise InvalidInput(
                f"this model's maximum context length is {limit} tokens; the messages (with the "
                f"system prompt) take {used} tokens"
            )
        max_tokens = request.max_tokens or min(spec.default_max_tokens, limit - used)
        if used + max_tokens > limit:
            raise InvalidInput(
                f"this model's maximum context length is {limit} tokens; {used} prompt tokens "
                f"plus max_tokens {max_tokens} exceed it"
            )
        params = SamplingParams(
            max_tokens=max_tokens, temperature=request.temperature, top_p=request.top_p,
            seed=request.seed,
        )
        return prompt, params

    async def stream(
        self, request_id: str, request: ChatRequest, adapter: object = None
    ) -> AsyncIterator[dict[str, Any]]:
        """start -> delta* -> end events; closing it early cancels generation."""
        prompt, params = self.plan(request)
        yield start_event(len(prompt))
        text = TextStream(self.tokenizer, tuple(request.stop))
        finish, generated = "length", 0
        progress = self.engine.generate(request_id, prompt, params, adapter)
        try:
            async for p in progress:
                generated = len(p.token_ids)
                delta = text.update(p.token_ids, final=p.finished)
                if delta:
                    yield {"type": "delta", "text": delta}
                if text.stopped or p.hit_eos:
                    finish = "stop"
                if text.stopped or p.finished:
                    break
        finally:
            await progress.aclose()  # type: ignore[attr-defined]
        yield {
            "type": "end", "finish_reason": finish,
            "prompt_tokens": len(prompt), "completion_tokens": generated,
        }
