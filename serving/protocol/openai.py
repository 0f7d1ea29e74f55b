"""OpenAI chat-completions wire types: the request Medserve accepts, the replies it sends.

Field for field OpenAI's, so the `openai` client parses them unchanged, plus Medserve's
`decision_support` extension (clients keep unknown fields: `completion.decision_support`).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.errors import InvalidInput

# Paths of the OpenAI-compatible API: their errors take OpenAI's body shape.
ROUTE_PREFIXES = ("/v1/chat/", "/v1/completions", "/v1/models", "/v1/load_lora_adapter",
                  "/v1/unload_lora_adapter")
CHARS_PER_TOKEN = 16  # generous: BPE vocabularies average ~4 characters per token on text

DECISION_SUPPORT = (
    "Decision support only: generated text may be wrong or incomplete; a clinician must review "
    "it and makes the final decision."
)


CREATED = int(time.time())  # `created` of /v1/models entries: when this gateway started


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def plain(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "\n".join(
            p.text for p in self.content
        )
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(Strict):
    include_usage: bool = False


class ChatCompletionRequest(Strict):
    model: str = Field(description="`clinical-llm` or `clinical-llm:<adapter>`.")
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="Completion token cap.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Alias of max_tokens.")
    temperature: float = Field(1.0, ge=0, le=2, description="0 is greedy decoding.")
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = Field(None, description="Up to 4 stop strings.")
    seed: int | None = Field(None, description="Reproducible sampling for the same request.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="Only one choice is generated.")
    presence_penalty: float = Field(0.0, ge=0, le=0, description="Not supported: only 0.")
    frequency_penalty: float = Field(0.0, ge=0, le=0, description="Not supported: only 0.")
    user: str | None = Field(None, description="Accepted and ignored (never logged).")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops

    @model_validator(mode="after")
    def _unicode(self) -> ChatCompletionRequest:
        # JSON may escape a lone surrogate ("\\ud800"): no tokenizer can take it, so it is a
        # 400 here rather than an exception in the LLM replica.
        texts = [*(m.plain()["content"] for m in self.messages),
                 *(m.name for m in self.messages if m.name), *(self.stop or [])]
        try:
            for text in texts:
                text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text must be valid Unicode (a lone surrogate is not)") from None
        return self

    def check_prompt_size(self, context_window: int) -> None:
        """Refuse a prompt that cannot fit the context window, by its length in characters,
        before anyone tokenises it: a tokenizer takes seconds over a megabyte, on the engine's
        replica. No tokenizer here gives fewer than one token per CHARS_PER_TOKEN characters
        on text, so a longer prompt is over the window whatever it says."""
        chars = sum(len(m.plain()["content"]) for m in self.messages)
        if chars > context_window * CHARS_PER_TOKEN:
            raise InvalidInput(f"the messages are too long for the model's context window of "
                               f"{context_window} tokens")

    def for_engine(self) -> dict[str, Any]:
        return {
            "messages": [m.plain() for m in self.messages],
            "max_tokens": self.max_completion_tokens or self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": self.stop or [],  # validators skip the default None
        }


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class DecisionSupport(BaseModel):
    notice: str = DECISION_SUPPORT
    model_version: str = Field(description="Version of the base model that answered.")
    intended_use: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    decision_support: DecisionSupport


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = CREATED
    owned_by: str = "medserve"
    root: str
    parent: str | None = None
    description: str = ""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
