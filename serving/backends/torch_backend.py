"""In-process PyTorch backend (CPU, or the GPU where the replica was given one)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from serving.backends.base import InProcess, run_in_chunks, sliding_window
from serving.cancellation import Stop, checked, never
from serving.repository.networks import freeze_for_inference, load_network
from serving.schema.imaging import CTPreprocessing, ModelManifest, ModelVersion


class TorchBackend(InProcess):
    def __init__(
        self, manifest: ModelManifest, version: ModelVersion, path: Path, device: str,
        threads: int = 1,
    ) -> None:
        self.device = device
        # One inference thread per replica, the only thread that runs large torch kernels.
        # OpenMP's thread count is per calling thread (Ray sets OMP_NUM_THREADS to the actor's
        # CPUs for the others), so it is set in that thread itself. Measured here: a second
        # multi-threaded OpenMP team in the same process halves throughput on 2 cores.
        self.executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="torch", initializer=torch.set_num_threads,
            initargs=(threads,),
        )
        self.max_batch_size = manifest.batching.max_batch_size
        net = load_network(manifest.architecture, version.weights, path, device)
        self.net = freeze_for_inference(net, self._example(manifest).to(device))
        self.inferer = sliding_window(manifest)
        pre = manifest.preprocessing
        self.largest_pass = (pre.sw_batch_size if isinstance(pre, CTPreprocessing)
                             else self.max_batch_size)

    @staticmethod
    def _example(manifest: ModelManifest) -> torch.Tensor:
        """An input of the shape the network sees: one image, or one sliding window."""
        pre = manifest.preprocessing
        if isinstance(pre, CTPreprocessing):
            return torch.zeros(1, 1, *pre.roi_size)
        return torch.zeros([1 if d == -1 else d for d in manifest.inputs[0].shape])

    @torch.inference_mode()
    def run_sync(self, inputs: list[np.ndarray], stop: Stop = never) -> list[np.ndarray]:
        if self.inferer is not None:  # volumes differ in size: one sliding-window pass each
            return [self._forward(x, checked(self.net, stop), sliding=True) for x in inputs]

        return run_in_chunks(inputs, self.max_batch_size, checked(self.forward, stop))

    @torch.inference_mode()
    def forward(self, x: np.ndarray) -> np.ndarray:
        return self._forward(x, self.net, sliding=False)

    def _forward(self, x: np.ndarray, net: Callable[[torch.Tensor], torch.Tensor], *,
                 sliding: bool) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        y = self.inferer(t, net) if sliding and self.inferer else net(t)
        assert isinstance(y, torch.Tensor)
        return y.float().cpu().numpy()
