"""LLM deployment: one per clinical LLM, its engine chosen per replica, adapters multiplexed.

Adapters are Serve multiplexed models: the gateway sets `multiplexed_model_id` to the adapter
name, Serve routes the request to a replica that already holds that adapter when there is one,
and each replica keeps the `max_adapters_per_replica` most recently used (LRU), loading others
from the repository on demand (checksum first) and unloading the least recently used.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.context import _get_serve_request_context

from serving.errors import ModelNotFound
from serving.llm.chat import ChatRequest, ChatService
from serving.llm.engine import Engine, select_engine
from serving.protocol.headers import accepted_request_id
from serving.repository.runtime_adapters import ManifestWatch
from serving.repository.store import load_repository

log = logging.getLogger("ray.serve")


class AdapterSlot:
    """What the multiplexed LRU holds; Serve calls `__del__` when it evicts the adapter."""

    def __init__(self, name: str, handle: object, engine: Engine,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.name, self.handle, self.engine, self.loop = name, handle, engine, loop
        self.released = False

    def __del__(self) -> None:
        if self.released:
            return
        self.released = True
        # RuntimeError: the replica's loop is gone, the process is shutting down anyway.
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(self.engine.unload_adapter(self.handle), self.loop)


def _metrics(manifest: Any, version: str) -> Any:
    """The LLM metrics of serving/observability/metrics.py, or None outside a Serve replica."""
    try:
        from serving.observability.metrics import LLMMetrics
    except ImportError:  # pragma: no cover - metrics module absent
        return None
    return LLMMetrics(
        manifest.name, version, [a.name for a in manifest.adapters],
        ttft_thresholds_s=[manifest.slo.ttft_threshold_s],
        itl_thresholds_s=[manifest.slo.itl_threshold_s],
    )


@serve.deployment
class LLMModel:
    def __init__(self, repo_root: str, model: str) -> None:
        import torch
        from transformers import AutoTokenizer

        self.repo = repo = load_repository(Path(repo_root))
        self.manifest = manifest = repo.llms[model]
        self.watch = ManifestWatch(repo.root, model)  # adapters loaded at run time
        self.version = manifest.served_version
        for f in repo.llm_files(model):  # refuse to start on a bad checkpoint, not per request
            repo.verify_file(f)
        model_dir = repo.version_dir(model, self.version)
        adapter_dirs = {a.name: (model_dir / a.weights.file).parent for a in manifest.adapters}
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        gpu = torch.cuda.is_available()
        vllm_installed = importlib.util.find_spec("vllm") is not None  # found, not imported
        kind = select_engine(manifest.engine.kind, gpu, vllm_installed)
        if gpu and kind == "transformers" and manifest.engine.kind == "auto":
            log.warning("%s: this image has no vLLM; the transformers engine serves it on the "
                        "CPU of a GPU replica", model)
        engine: Engine
        if kind == "vllm":
            from serving.llm.vllm_engine import VLLMEngine

            engine = VLLMEngine(model_dir, adapter_dirs, manifest.engine)
        else:
            from serving.llm.transformers_engine import TransformersEngine

            res = manifest.resources
            engine = TransformersEngine(
                model_dir, adapter_dirs, manifest.engine, int(tokenizer.eos_token_id),
                threads=res.threads or max(1, int(res.cpus)),
            )
        self.engine = engine
        self.chat_service = ChatService(manifest, tokenizer, engine)
        self.metrics = _metrics(manifest, self.version)
        if self.metrics is not None:
            from serving.observability.metrics import heartbeat, heartbeat_period_s

            self._stop_gauges = heartbeat(self._record_load, heartbeat_period_s())

        # A plain function, not the bound method: the LRU's cache size comes from the manifest,
        # so the decorator is applied here, and Serve keeps its state on the decorated object.
        async def load_adapter(name: str) -> AdapterSlot:
            return await self._load_adapter(name)

        self._adapter = serve.multiplexed(
            max_num_models_per_replica=manifest.engine.max_adapters_per_replica
        )(load_adapter)
        log.info("loaded %s version %s with the %s engine", model, self.version, kind)

    def _reread_manifest(self) -> None:
        """An adapter loaded at run time (`POST /v1/load_lora_adapter`) is in the manifest on
        disk: take it up without a restart. A new base version needs a new deployment."""
        if not self.watch.changed():
            return
        repo = load_repository(self.repo.root)
        manifest = repo.llms[self.manifest.name]
        if manifest.served_version != self.version:
            return
        version_dir = repo.version_dir(manifest.name, self.version)
        for a in manifest.adapters:
            self.engine.adapter_dirs.setdefault(a.name, (version_dir / a.weights.file).parent)
        self.repo, self.manifest = repo, manifest
        self.chat_service.manifest = manifest

    async def _load_adapter(self, name: str) -> AdapterSlot:
        self._reread_manifest()
        try:
            self.manifest.adapter(name)
        except KeyError:
            raise ModelNotFound(f"model {self.manifest.name!r} has no such adapter") from None
        start = time.perf_counter()
        for f in self.repo.llm_files(self.manifest.name):
            if f.label.startswith(f"{self.manifest.name}:{name} "):
                self.repo.verify_file(f)  # adapters load on demand: check each one then
        handle = await self.engine.load_adapter(name)
        if self.metrics is not None:
            tags = self.metrics.tags(name)
            self.metrics.adapter_loads.inc(1, tags)
            self.metrics.adapter_load_duration.observe(time.perf_counter() - start, tags)
        return AdapterSlot(name, handle, self.engine, asyncio.get_running_loop())

    def _record_load(self) -> None:
        stats = self.engine.stats()
        self.metrics.running.set(stats.running)
        self.metrics.waiting.set(stats.waiting)
        self.metrics.adapters_loaded.set(stats.adapters_loaded)
        self.metrics.ready.set(1.0)  # the heartbeat starts once the engine is loaded

    async def chat_stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """start -> delta* -> end events for one chat; used with `.options(stream=True)`."""
        received = time.perf_counter()  # TTFT counts the adapter load and the engine queue
        adapter_name = serve.get_multiplexed_model_id() or None
        slot = await self._adapter(adapter_name) if adapter_name else None
        # The engine keys sequences by id: the Serve id ties logs together, the suffix keeps a
        # retried request from colliding with its first attempt.
        serve_id = accepted_request_id(_get_serve_request_context().request_id)
        request_id = f"{serve_id}-{uuid.uuid4().hex[:8]}"
        events = self.chat_service.stream(
            request_id, ChatRequest(**request), slot.handle if slot else None
        )
        async for event in self._observed(events, adapter_name, received):
            yield event

    async def chat(self, request: dict[str, Any]) -> dict[str, Any]:
        """The whole reply at once: text, finish reason and token counts."""
        parts: list[str] = []
        end: dict[str, Any] = {}
        async for event in self.chat_stream(request):
            if event["type"] == "delta":
                parts.append(event["text"])
            elif event["type"] == "end":
                end = event
        return {**end, "text": "".join(parts)}

    async def _observed(
        self, events: AsyncIterator[dict[str, Any]], adapter: str | None, start: float
    ) -> AsyncIterator[dict[str, Any]]:
        """Pass events through, recording TTFT, inter-token latency and token counts."""
        m = self.metrics
        last = start
        first = True
        async for event in events:
            if m is not None and event["type"] == "delta":
                now = time.perf_counter()
                tags = m.tags(adapter)
                if first:
                    m.ttft.observe(now - start, tags)
                    first = False
                else:
                    m.itl.observe(now - last, tags)
                last = now
            if m is not None and event["type"] == "end":
                tags = m.tags(adapter)
                m.prompt_tokens.inc(event["prompt_tokens"], tags)
                m.generation_tokens.inc(event["completion_tokens"], tags)
                m.duration.observe(time.perf_counter() - start, tags)
            yield event

    def models(self) -> list[str]:
        return [a.name for a in self.manifest.adapters]

    def stats(self) -> dict[str, int]:
        s = self.engine.stats()
        return {"running": s.running, "waiting": s.waiting, "adapters_loaded": s.adapters_loaded}

    def ready(self) -> bool:
        return self.engine.ready()

    def check_health(self) -> None:
        if not self.engine.ready():
            raise RuntimeError("LLM engine not running")

    def __del__(self) -> None:
        stop = getattr(self, "_stop_gauges", None)
        if stop is not None:
            stop.set()
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
