"""GPU engine: vLLM's AsyncLLM with multi-LoRA, for replicas that hold a GPU.

vLLM batches requests for different adapters in the same step (punica LoRA kernels), keeps
`max_loras` adapters on the GPU and `max_cpu_loras` in host memory, and pages its own KV
cache. It is imported only here and only when a replica selects it, so CPU machines never
import vllm (it is not a dependency of the CPU install).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.llm.engine import EngineKind, EngineStats, Progress, SamplingParams
from serving.schema.llm import EngineSpec

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class LoRAHandle:
    name: str
    request: Any  # vllm.lora.request.LoRARequest


def engine_args(model_dir: Path, spec: EngineSpec, enable_lora: bool) -> dict[str, Any]:
    """Keyword arguments of vllm's AsyncEngineArgs, from the manifest (unit-tested on CPU)."""
    v = spec.vllm
    args: dict[str, Any] = {
        "model": str(model_dir),
        "tokenizer": str(model_dir),
        "max_model_len": spec.context_window,
        "gpu_memory_utilization": v.gpu_memory_utilization,
        "dtype": v.dtype,
        "enforce_eager": v.enforce_eager,
        "max_num_seqs": spec.max_requests_per_batch,
        "seed": 0,
    }
    if enable_lora:
        args.update(
            enable_lora=True, max_loras=v.max_loras, max_lora_rank=v.max_lora_rank,
            max_cpu_loras=v.max_cpu_loras,
        )
    return args


class VLLMEngine:
    kind: EngineKind = "vllm"

    def __init__(self, model_dir: Path, adapter_dirs: dict[str, Path], spec: EngineSpec) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.adapter_dirs = adapter_dirs
        # LoRA ids are stable per adapter name: vLLM caches adapters by this integer id.
        self.lora_ids = {name: i + 1 for i, name in enumerate(sorted(adapter_dirs))}
        args = AsyncEngineArgs(**engine_args(model_dir, spec, enable_lora=bool(adapter_dirs)))
        self.engine = AsyncLLM.from_engine_args(args)
        self.running = 0
        self.loaded: set[str] = set()

    def _sampling(self, params: SamplingParams) -> Any:
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        return VSamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=1.0 if params.greedy else params.top_p,
            seed=params.seed,
            detokenize=False,  # text, stop strings and usage are computed in serving/llm/chat.py
            output_kind=RequestOutputKind.CUMULATIVE,
        )

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams, adapter: object
    ) -> AsyncIterator[Progress]:
        from vllm.inputs import TokensPrompt

        lora = adapter.request if isinstance(adapter, LoRAHandle) else None
        self.running += 1
        try:
            # Closing this generator early aborts the vLLM request, freeing its KV blocks.
            async for out in self.engine.generate(
                TokensPrompt(prompt_token_ids=prompt_ids), self._sampling(params), request_id,
                lora_request=lora,
            ):
                completion = out.outputs[0]
                yield Progress(
                    list(completion.token_ids), bool(out.finished),
                    hit_eos=completion.finish_reason == "stop",
                )
        finally:
            self.running -= 1

    async def load_adapter(self, name: str) -> LoRAHandle:
        from vllm.lora.request import LoRARequest

        # an adapter loaded at run time gets the next id (vLLM keys its LoRA cache by id)
        lora_id = self.lora_ids.setdefault(name, max(self.lora_ids.values(), default=0) + 1)
        request = LoRARequest(name, lora_id, str(self.adapter_dirs[name]))
        await self.engine.add_lora(request)
        self.loaded.add(name)
        return LoRAHandle(name, request)

    async def unload_adapter(self, handle: object) -> None:
        if isinstance(handle, LoRAHandle):
            self.loaded.discard(handle.name)
            await self.engine.remove_lora(handle.request.lora_int_id)

    def stats(self) -> EngineStats:
        return EngineStats(self.running, 0, len(self.loaded))

    def ready(self) -> bool:
        return not getattr(self.engine, "errored", False)

    def shutdown(self) -> None:
        self.engine.shutdown()
