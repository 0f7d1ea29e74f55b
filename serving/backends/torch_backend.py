"""In-process PyTorch backend (CPU, or the GPU where the replica was given one)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer

from serving.backends import check_outputs
from serving.config import CTPreprocessing, ModelManifest, ModelVersion
from serving.networks import load_network


class TorchBackend:
    def __init__(self, manifest: ModelManifest, version: ModelVersion, path: Path, device: str):
        self.device = device
        self.max_batch_size = manifest.batching.max_batch_size
        self.net = load_network(manifest.architecture, version.weights, path, device)
        pre = manifest.preprocessing
        self.inferer = (
            SlidingWindowInferer(
                roi_size=pre.roi_size, sw_batch_size=pre.sw_batch_size, overlap=pre.overlap,
                mode="gaussian", padding_mode="constant", cval=0.0,
            )
            if isinstance(pre, CTPreprocessing)
            else None
        )

    def ready(self) -> bool:
        return True

    async def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        # A worker thread keeps the replica's event loop free to accept (and batch) requests
        # while torch computes; torch releases the GIL inside its kernels.
        return check_outputs(inputs, await asyncio.to_thread(self.run_sync, inputs))

    @torch.inference_mode()
    def run_sync(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if self.inferer is not None:  # volumes differ in size: one sliding-window pass each
            return [self._forward(x, sliding=True) for x in inputs]
        sizes = [len(x) for x in inputs]
        batch = np.concatenate(inputs) if len(inputs) > 1 else inputs[0]
        chunks = [
            self._forward(batch[i : i + self.max_batch_size], sliding=False)
            for i in range(0, len(batch), self.max_batch_size)
        ]
        out = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
        return np.split(out, np.cumsum(sizes)[:-1])

    def _forward(self, x: np.ndarray, *, sliding: bool) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        y = self.inferer(t, self.net) if sliding and self.inferer else self.net(t)
        return y.float().cpu().numpy()
