"""Inference backends: run a list of preprocessed input tensors, return one output per input.

The contract is list-in/list-out (LitServe/KServe style); `check_outputs` enforces it so a
backend that drops or duplicates an item fails loudly instead of mis-attributing results.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
from monai.inferers import SlidingWindowInferer

from serving.cancellation import Stop, never
from serving.errors import Unavailable
from serving.schema.imaging import CTPreprocessing, ModelManifest


class Backend(Protocol):
    async def run(self, inputs: list[np.ndarray], stop: Stop = never) -> list[np.ndarray]: ...

    def ready(self) -> bool: ...


def check_outputs(inputs: list[np.ndarray], outputs: list[np.ndarray]) -> list[np.ndarray]:
    if len(outputs) != len(inputs):
        raise RuntimeError(f"backend returned {len(outputs)} outputs for {len(inputs)} inputs")
    for x, y in zip(inputs, outputs, strict=True):
        if y.shape[0] != x.shape[0]:
            raise RuntimeError("backend output batch size differs from its input")
    return outputs


def run_in_chunks(
    inputs: list[np.ndarray], chunk: int, forward: Callable[[np.ndarray], np.ndarray]
) -> list[np.ndarray]:
    """One batch of requests as forward passes of at most `chunk` items: the inputs are
    concatenated along the batch axis, run chunk by chunk, and split back per request."""
    sizes = [len(x) for x in inputs]
    batch = np.concatenate(inputs) if len(inputs) > 1 else inputs[0]
    chunks = [forward(batch[i : i + chunk]) for i in range(0, len(batch), chunk)]
    out = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    return np.split(out, np.cumsum(sizes)[:-1])


class NotLoaded:
    """The backend of a model whose load failed: never ready, and every call a retryable 503
    at once, so one broken model leaves the others serving and says which one it is."""

    def __init__(self, message: str) -> None:
        self.error = Unavailable(message, retry_after_s=30, reason="not_ready")

    async def run(self, inputs: list[np.ndarray], stop: Stop = never) -> list[np.ndarray]:
        raise self.error

    def ready(self) -> bool:
        return False


def sliding_window(manifest: ModelManifest) -> SlidingWindowInferer | None:
    """MONAI's sliding-window inferer of a CT model (the manifest's ROI, overlap and windows
    per pass, Gaussian blending), or None for models that take whole images."""
    pre = manifest.preprocessing
    if not isinstance(pre, CTPreprocessing):
        return None
    return SlidingWindowInferer(
        roi_size=pre.roi_size, sw_batch_size=pre.sw_batch_size, overlap=pre.overlap,
        mode="gaussian", padding_mode="constant", cval=0.0,
    )


def warm_up_shapes(manifest: ModelManifest, largest: int) -> list[tuple[int, ...]]:
    """The smallest and the largest forward pass the replica can be asked for: 1 and
    `largest` images, or sliding windows for CT models."""
    pre = manifest.preprocessing
    item = ((1, *pre.roi_size) if isinstance(pre, CTPreprocessing)
            else tuple(manifest.inputs[0].shape[1:]))
    return [(n, *item) for n in sorted({1, largest})]


class InProcess:
    """A backend that computes in the replica itself, on one worker thread: the replica's event
    loop stays free to accept (and batch) requests while the kernels run, which release the
    GIL. Subclasses set `executor` and `largest_pass`, and implement `run_sync` and
    `forward`."""

    executor: ThreadPoolExecutor
    largest_pass: int  # the most images (or windows) one forward pass takes

    def ready(self) -> bool:
        return True

    def forward(self, x: np.ndarray) -> np.ndarray:
        """One forward pass of a batch of images or windows."""
        raise NotImplementedError

    def warm_up(self, manifest: ModelManifest) -> None:
        """The smallest and the largest forward pass, at start-up on the inference thread:
        the replica takes its working memory (cxr-triage with jemalloc: 565 -> 708 MiB of
        the 755 it holds under any mix of batch sizes) and the frozen graph's first-call
        specialisation before it is ready, not when its first full batch forms under load
        (0.9 s for cxr-triage here)."""
        for shape in warm_up_shapes(manifest, self.largest_pass):
            self.executor.submit(self.forward, np.zeros(shape, np.float32)).result()

    async def run(self, inputs: list[np.ndarray], stop: Stop = never) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        outputs = await loop.run_in_executor(self.executor, self.run_sync, inputs, stop)
        return check_outputs(inputs, outputs)

    def run_sync(self, inputs: list[np.ndarray], stop: Stop = never) -> list[np.ndarray]:
        """Checks `stop` between chunks and windows (`checked`): a thread cannot be killed."""
        raise NotImplementedError
