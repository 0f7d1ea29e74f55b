"""The small interface every LLM engine implements, and which engine a replica runs.

Engines take prompt token ids and yield cumulative generated ids; tokenising, the chat
template, stop strings and the OpenAI shape live above them (serving/llm/chat.py), so the CPU
and GPU engines answer identically.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

EngineKind = Literal["transformers", "vllm"]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class Progress:
    """Everything generated so far for one request; `finished` once the engine stops it."""

    token_ids: list[int]
    finished: bool
    hit_eos: bool = False


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    adapters_loaded: int


class Engine(Protocol):
    kind: EngineKind
    adapter_dirs: dict[str, Path]  # adapter name -> PEFT folder; grows at run time

    def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams, adapter: object
    ) -> AsyncIterator[Progress]:
        """Stream progress; closing the iterator early cancels the request and frees its slot."""
        ...

    async def load_adapter(self, name: str) -> object:
        """Make an adapter servable; the returned handle is passed back to `generate`."""
        ...

    async def unload_adapter(self, handle: object) -> None: ...

    def stats(self) -> EngineStats: ...

    def ready(self) -> bool: ...

    def shutdown(self) -> None: ...


def select_engine(
    requested: str, gpu_available: bool, vllm_installed: bool = True
) -> EngineKind:
    """`auto` picks vLLM on a GPU replica whose image has it, transformers otherwise; vLLM
    needs a GPU and the `vllm` package (GPU images only: it pins its own torch)."""
    if requested == "transformers":
        return "transformers"
    if requested == "vllm":
        if not gpu_available:
            raise ValueError("engine kind vllm needs a GPU replica (resources.gpus and a GPU)")
        if not vllm_installed:
            raise ValueError("engine kind vllm needs the vllm package in the replica's image")
        return "vllm"
    if requested != "auto":
        raise ValueError(f"unknown engine kind {requested!r}")
    return "vllm" if gpu_available and vllm_installed else "transformers"
