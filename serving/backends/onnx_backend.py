"""ONNX Runtime backend: a model whose file carries its own graph (a vendor's ONNX export),
run in-process on the CPU provider, or CUDA's where the replica holds a GPU.

Batched like the torch backend: the requests of one batch are concatenated along the batch
axis when the graph's batch dimension is dynamic, and cut into chunks of the graph's fixed
batch size otherwise (the last chunk zero-padded). CT models run ONNX Runtime under MONAI's
sliding-window inferer, one volume at a time.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from serving.backends.base import InProcess, run_in_chunks, sliding_window
from serving.cancellation import Stop, checked, never
from serving.repository.onnx_graph import check_onnx, session
from serving.schema.imaging import CTPreprocessing, ModelManifest


class OnnxBackend(InProcess):
    def __init__(self, manifest: ModelManifest, path: Path, device: str, threads: int = 1) -> None:
        check_onnx(path, manifest.inputs, manifest.outputs)
        self.session = session(path, threads, gpu=device == "cuda")
        (graph_input,) = self.session.get_inputs()
        self.input_name = graph_input.name
        self.output_name = self.session.get_outputs()[0].name
        fixed = graph_input.shape[0]
        self.fixed_batch = fixed if isinstance(fixed, int) and fixed > 0 else None
        self.chunk = self.fixed_batch or manifest.batching.max_batch_size
        pre = manifest.preprocessing
        if self.fixed_batch:  # every pass is padded to the graph's batch: one shape
            self.largest_pass = 1
        else:
            self.largest_pass = (pre.sw_batch_size if isinstance(pre, CTPreprocessing)
                                 else self.chunk)
        # One thread runs the session (it has its own intra-op pool of `threads`).
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self.inferer = sliding_window(manifest)

    def run_sync(self, inputs: list[np.ndarray], stop: Stop = never) -> list[np.ndarray]:
        if self.inferer is not None:  # volumes differ in size: one sliding-window pass each
            return [self._volume(x, stop) for x in inputs]
        return run_in_chunks(inputs, self.chunk, checked(self.forward, stop))

    def forward(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if self.fixed_batch is not None and n < self.fixed_batch:
            x = np.concatenate([x, np.zeros((self.fixed_batch - n, *x.shape[1:]), x.dtype)])
        (y,) = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x)})
        return np.asarray(y)[:n]

    @torch.inference_mode()
    def _volume(self, x: np.ndarray, stop: Stop) -> np.ndarray:
        assert self.inferer is not None

        def window(w: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(self.forward(w.numpy()))

        y = self.inferer(torch.from_numpy(x), checked(window, stop))
        assert isinstance(y, torch.Tensor)
        return y.numpy()
