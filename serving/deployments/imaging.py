"""ImagingModel deployment: decode -> preprocess -> batch (serving/backends/batching.py) ->
backend -> findings.

One deployment per (model, version), configured from its manifest. Batching limits come from
the manifest and are applied to the batch queue at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import serve

from serving.backends.base import Backend, InProcess, NotLoaded
from serving.backends.batching import Batcher
from serving.backends.onnx_backend import OnnxBackend
from serving.backends.torch_backend import TorchBackend
from serving.backends.triton_backend import TritonBackend
from serving.errors import ModelLoadError
from serving.imaging.pipeline import Payload, Source, make_pipeline
from serving.imaging.segmentation import mask_on_series
from serving.observability.metrics import ModelMetrics, batch_buckets, latency_buckets
from serving.protocol.results import ResultFormat
from serving.repository.store import Repository, load_repository
from serving.results.encode import encode_result

log = logging.getLogger("ray.serve")


def _device() -> str:
    # Ray sets CUDA_VISIBLE_DEVICES to the replica's assigned GPUs (none when num_gpus=0).
    return "cuda" if torch.cuda.is_available() else "cpu"


@serve.deployment
class ImagingModel:
    def __init__(
        self, repo_root: str, model: str, version: str, triton_url: str | None = None,
        backend: str | None = None,
    ) -> None:
        """`backend` overrides the manifest's (the cluster's choice, `AppArgs.backends`)."""
        repo = load_repository(Path(repo_root))
        if backend is not None:
            repo = repo.with_backends({model: backend})
        self.manifest = repo.manifest(model)
        self.version = version
        self.backend: Backend
        try:
            self.backend = self._load(repo, triton_url)
            if isinstance(self.backend, InProcess):
                started = time.perf_counter()
                self.backend.warm_up(self.manifest)
                log.info("%s version %s warmed up in %.1f s", model, version,
                         time.perf_counter() - started)
        except ModelLoadError as exc:
            # This model only: the others keep serving, and its readiness says it is not.
            # The message names files and checksums, never request data.
            log.error("%s version %s failed to load: %s", model, version, exc.message)
            self.backend = NotLoaded(f"{model} version {version} failed to load")
        self.pipeline = make_pipeline(self.manifest)
        # Buckets from the whole repository: every process must register identical buckets.
        models = list(repo.all_manifests.values())
        self.metrics = ModelMetrics(
            model, version, latency_buckets(models), batch_buckets(models)
        )
        self.batcher = Batcher(self.backend, self.manifest.batching, self.metrics)
        self.metrics.keep_ready(self.backend.ready)
        log.info("loaded %s version %s on %s", model, version, _device())

    def _load(self, repo: Repository, triton_url: str | None) -> Backend:
        m, v = self.manifest, self.manifest.version(self.version)
        runtime = m.runtime(self.version)
        if runtime == "triton":
            if not triton_url:
                raise ModelLoadError(f"{m.name}: backend triton needs a Triton URL")
            return TritonBackend(m, v, triton_url)
        res = m.resources
        threads = res.threads or max(1, math.ceil(res.cpus))
        path = repo.verify(m.name, v)
        if runtime == "onnxruntime":
            return OnnxBackend(m, path, _device(), threads)
        return TorchBackend(m, v, path, _device(), threads)

    def ready(self) -> bool:
        return self.backend.ready()

    def _check_loaded(self) -> None:
        """A model that failed to load answers its 503 before any decoding."""
        if isinstance(self.backend, NotLoaded):
            raise self.backend.error

    def check_health(self) -> None:
        """Liveness of this replica only. A backend that is not ready (Triton down) shows in
        `ready` and answers 503; Serve restarting this replica would not bring Triton back."""

    async def predict(self, payload: Payload) -> dict[str, Any]:
        """Full pipeline for one study; returns findings and timings in milliseconds, and the
        result encoded as the payload asks (DICOM SR, FHIR) under `encoded`."""
        self._check_loaded()
        t0 = time.perf_counter()
        given_up = threading.Event()  # read by the preprocessing thread between instances
        try:
            x, source = await asyncio.to_thread(self.pipeline.prepare, payload, given_up.is_set)
        except asyncio.CancelledError:
            given_up.set()
            raise
        t1 = time.perf_counter()
        self.metrics.preprocess.observe(t1 - t0)
        y, queue_s, infer_s = await self.batcher(x)
        t2 = time.perf_counter()
        findings = self.pipeline.findings(y, source)
        encoded = None
        if payload.result is not ResultFormat.JSON:
            encoded = await asyncio.to_thread(self._encode, payload.result, findings, source)
        t3 = time.perf_counter()
        return {
            "encoded": encoded,
            "findings": findings,
            "timings_ms": {
                "preprocess": round((t1 - t0) * 1e3, 3),
                "queue": round(queue_s * 1e3, 3),
                "inference": round(infer_s * 1e3, 3),
                "postprocess": round((t3 - t2) * 1e3, 3),
            },
        }

    def _encode(self, fmt: ResultFormat, findings: list[dict[str, Any]], source: Source
                ) -> bytes:
        mask = None
        if fmt is ResultFormat.DICOM_SEG:
            assert source.mask is not None and source.affine is not None
            assert source.series_affine is not None and source.series_shape is not None
            mask = mask_on_series(source.mask, source.affine, source.series_affine,
                                  source.series_shape)
        return encode_result(fmt, self.manifest, self.version, findings, source.headers, mask)

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw tensors in, raw tensors out (the OIP path); inputs are validated upstream."""
        self._check_loaded()
        (x,) = inputs.values()
        y, _, _ = await self.batcher(x.astype(np.float32, copy=False))
        return {self.manifest.outputs[0].name: y}
