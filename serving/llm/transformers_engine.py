"""CPU engine: transformers' continuous batching, one batching loop per loaded model variant.

Continuous batching packs every running sequence into one forward pass, so concurrent
requests share decode steps. A step runs one set of weights, though, and PEFT's mixed-adapter
batches split along the batch axis, which continuous batching's packed (1, tokens) layout does
not have. So each adapter is served by its own loop over a copy of the base with the LoRA
merged in (PEFT `merge_and_unload`): requests for one adapter batch together at full base
speed with no LoRA overhead, while different adapters on one replica run side by side. Serve's
multiplexed routing sends an adapter's requests to replicas that already hold it, which keeps
each loop's batches full. (The GPU engine, vLLM, batches different adapters in one step.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from serving.errors import MedserveError, Unavailable
from serving.llm import sampling, varlen_attention
from serving.llm.engine import EngineKind, EngineStats, Progress, SamplingParams
from serving.llm.packed_linear import pack_linears
from serving.repository.hf_checkpoint import load_causal_lm
from serving.schema.llm import EngineSpec

log = logging.getLogger("ray.serve")
# transformers' batching logger writes prompt token ids into some of its warnings (a dropped
# request's first and last ids): keep only its errors, which carry no request content.
logging.getLogger("ContinuousBatchingLogger").setLevel(logging.ERROR)
FORCE_SDPA_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"  # read by transformers on every attention call

STOP_TIMEOUT_S = 30.0
# Rows per call oneDNN lays the packed weights out for (any number works). 16 streams
# in-process here, tokens/s by hint: 1: 79-83, 32: 94, 128: 105, 256: 99-102, 512: 96;
# unpacked: 69. Decode steps carry up to 32 rows, prefill chunks up to 512.
PACK_BATCH_HINT = 128

T = TypeVar("T")


class GenerationFailed(MedserveError):
    status_code = 500
    error_type = "internal_error"


class BatchingLoop:
    """One `ContinuousBatchingManager` (its own thread and paged KV cache) over one model."""

    def __init__(self, model: Any, spec: EngineSpec, num_blocks: int, eos_id: int) -> None:
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        vocab = int(model.config.vocab_size)
        # Processors exist only for values that differ from "off" at creation time; each request
        # then sets its own temperature, top-k and top-p (greedy is top-k 1).
        generation = GenerationConfig(
            do_sample=True, temperature=0.7, top_k=vocab, top_p=0.95,
            max_new_tokens=spec.default_max_tokens, eos_token_id=eos_id,
            pad_token_id=model.config.pad_token_id,
        )
        cache = ContinuousBatchingConfig(
            page_size=spec.page_size,
            num_blocks=num_blocks,
            max_batch_tokens=spec.max_batch_tokens,
            max_requests_per_batch=spec.max_requests_per_batch,
            per_request_processors=True,
            use_cuda_graph=False,
            use_async_batching=False,
            # Every conversation starts with the manifest's system prompt: with prefix sharing its
            # full KV pages are computed once and shared, so a request prefills only its own
            # messages (measured here: 16 streams 363 -> 574 tokens/s in one process).
            allow_block_sharing=True,
        )
        self.vocab = vocab
        self.eos_id = eos_id
        with torch.inference_mode():
            self.manager = model.init_continuous_batching(
                generation_config=generation, continuous_batching_config=cache
            )
            sampling.install(self.manager)
            self.manager.start()

    def _kwargs(self, params: SamplingParams) -> dict[str, Any]:
        if params.greedy:
            return {"temperature": 1.0, "top_k": 1, "top_p": 1.0}
        kwargs: dict[str, Any] = {
            "temperature": float(params.temperature), "top_k": self.vocab,
            "top_p": float(params.top_p),
        }
        if params.seed is not None:
            kwargs["seed"] = int(params.seed)
        return kwargs

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[Progress]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        manager = self.manager
        manager.register_result_handler(request_id, queue.put_nowait)
        added = manager.add_request(
            prompt_ids, request_id=request_id, max_new_tokens=params.max_tokens,
            streaming=True, **self._kwargs(params),
        )
        if added is None:
            self._forget(request_id)
            raise Unavailable("the LLM engine is not accepting requests; retry", retry_after_s=1)
        finished = False
        try:
            while not finished:
                out = await queue.get()
                while not queue.empty():  # outputs are cumulative: keep only the newest
                    out = queue.get_nowait()
                if out.error is not None:
                    log.error("generation failed for request %s", request_id)
                    raise GenerationFailed("generation failed")
                finished = out.is_finished()
                tokens = list(out.generated_tokens)
                yield Progress(tokens, finished, bool(tokens) and tokens[-1] == self.eos_id)
        finally:
            if not finished:
                # The client went away or a stop string ended the reply: free the slot now.
                manager.cancel_request(request_id)
                self._forget(request_id)

    def _forget(self, request_id: str) -> None:
        # A cancelled request gets no final output, so its handler would never be dropped.
        router = self.manager.output_router
        with router._lock:
            router.result_handlers.pop(request_id, None)

    def counts(self) -> tuple[int, int]:
        processor = self.manager.batch_processor
        queued = self.manager.input_queue.qsize()
        if processor is None:
            return 0, queued
        scheduler = processor.scheduler
        return len(scheduler.active_requests), len(scheduler.waiting_requests) + queued

    def ready(self) -> bool:
        return bool(self.manager.is_running())

    def stop(self) -> None:
        """Finish in-flight requests, then end the loop's thread (flush-and-stop)."""
        if self.manager.is_running():
            self.manager.stop(block=True, timeout=STOP_TIMEOUT_S)


@dataclass(frozen=True)
class LoadedAdapter:
    name: str
    loop: BatchingLoop


def decoding_model(model_dir: Path, adapter_dir: Path | None = None) -> Any:
    """The checkpoint (with its adapter merged in) ready to decode: linear weights packed."""
    model = load_causal_lm(model_dir, adapter_dir)
    pack_linears(model, PACK_BATCH_HINT)
    return model


def in_own_thread(build: Callable[[], T]) -> Future[T]:
    """Run `build` in a thread of its own that ends with it.

    Torch's CPU kernels run on OpenMP, and libgomp keeps a pool of worker threads for every
    thread that has run a parallel region, until that thread ends. A decode step runs some 250
    parallel regions on the batching loop's thread. Once another live thread (the replica's own,
    or an executor's) also holds a pool, there are more OpenMP threads than cores, and libgomp
    then lets its workers spin only briefly before they sleep: every region starts by waking
    them. Building a loop (loading, packing, allocating its cache) runs parallel regions too,
    so it is done here, and its pool goes when the thread does. 16 streams in-process on 2
    threads here: 96-112 tokens/s with the model built on the caller's thread, 145-153 with
    this. (Each loaded adapter's loop is a thread with a pool of its own.)
    """
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-build")
    try:
        return executor.submit(build)
    finally:
        executor.shutdown(wait=False)  # the worker thread ends once `build` returns


class TransformersEngine:
    kind: EngineKind = "transformers"

    def __init__(
        self, model_dir: Path, adapter_dirs: dict[str, Path], spec: EngineSpec, eos_id: int,
        threads: int,
    ) -> None:
        torch.set_num_threads(threads)
        # Grouped-query attention: transformers copies every key/value head once per query
        # head of its group, per layer and step (`repeat_kv`), unless SDPA does GQA itself,
        # which it asks for only on CUDA without a mask. Torch's CPU SDPA takes `enable_gqa`
        # with the paged batch's mask: the same greedy tokens, 16 streams in-process
        # 46.5-60.4 -> 57.2-71.3 tokens/s here. This engine runs on CPU only (load_causal_lm).
        os.environ[FORCE_SDPA_GQA] = "1"
        varlen_attention.install()  # each sequence attends to its own keys only
        self.model_dir = model_dir
        self.adapter_dirs = adapter_dirs
        self.spec = spec
        self.eos_id = eos_id
        self.base = in_own_thread(lambda: self._loop(None, spec.num_blocks)).result()
        self.adapters: dict[str, LoadedAdapter] = {}

    def _loop(self, adapter_dir: Path | None, num_blocks: int) -> BatchingLoop:
        model = decoding_model(self.model_dir, adapter_dir)
        return BatchingLoop(model, self.spec, num_blocks, self.eos_id)

    def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams, adapter: object
    ) -> AsyncIterator[Progress]:
        loop = adapter.loop if isinstance(adapter, LoadedAdapter) else self.base
        return loop.generate(request_id, prompt_ids, params)

    async def load_adapter(self, name: str) -> LoadedAdapter:
        build = in_own_thread(
            lambda: self._loop(self.adapter_dirs[name], self.spec.adapter_num_blocks))
        loaded = LoadedAdapter(name, await asyncio.wrap_future(build))
        self.adapters[name] = loaded
        log.info("adapter %s loaded", name)
        return loaded

    async def unload_adapter(self, handle: object) -> None:
        if not isinstance(handle, LoadedAdapter):
            return
        self.adapters.pop(handle.name, None)
        # Streams still running on the evicted adapter finish first; don't hold up the caller.
        threading.Thread(target=handle.loop.stop, name=f"unload-{handle.name}", daemon=True).start()
        log.info("adapter %s unloaded", handle.name)

    def stats(self) -> EngineStats:
        running, waiting = self.base.counts()
        for loaded in list(self.adapters.values()):
            r, w = loaded.loop.counts()
            running, waiting = running + r, waiting + w
        return EngineStats(running, waiting, len(self.adapters))

    def ready(self) -> bool:
        return self.base.ready()

    def shutdown(self) -> None:
        for loaded in list(self.adapters.values()):
            loaded.loop.stop()
        self.base.stop()
