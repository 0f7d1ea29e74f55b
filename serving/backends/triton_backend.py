"""Triton backend: preprocessed batches go to a Triton Inference Server over gRPC.

Triton's failures become Medserve's errors here: a server that is down, restarting, overloaded
or too slow is a retryable 503 (Unavailable, with Retry-After), answered within the manifest's
`triton.timeout_s` at worst and within about a second when the connection is refused, never
a hang.
Readiness asks Triton whether this model version is ready.
"""

from __future__ import annotations

import asyncio
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tenacity import AsyncRetrying, Retrying, retry_if_exception, stop_after_delay, wait_fixed
from tritonclient.utils import InferenceServerException

from serving.backends.base import check_outputs, sliding_window
from serving.cancellation import Stop, checked, never
from serving.errors import MedserveError, Unavailable
from serving.schema.imaging import ModelManifest, ModelVersion
from serving.triton.model_config import triton_io

log = logging.getLogger("ray.serve")

READY_TIMEOUT_S = 1.0
RETRY_AFTER_S = 1
# gRPC backs off reconnecting to a dead server for up to 2 minutes by default; capped here so
# requests flow again within half a second of Triton coming back.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]
# A channel still waiting out its backoff fails calls at once, even when Triton is back (and
# the readiness check, on the other channel, says so): such calls are retried for this long.
RECONNECT_S = 1.5
RECONNECT_POLL_S = 0.1
UNAVAILABLE = "StatusCode.UNAVAILABLE"


def _reconnecting(exc: BaseException) -> bool:
    return isinstance(exc, InferenceServerException) and exc.status() == UNAVAILABLE


R = TypeVar("R", Retrying, AsyncRetrying)


def _reconnect(retrying: type[R]) -> R:
    """Retry only a channel that is reconnecting; anything else, or the time running out,
    raises the last InferenceServerException for `_error` to map."""
    return retrying(retry=retry_if_exception(_reconnecting), stop=stop_after_delay(RECONNECT_S),
                    wait=wait_fixed(RECONNECT_POLL_S), reraise=True)
RETRYABLE = {
    "StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED",
    "StatusCode.CANCELLED", "StatusCode.NOT_FOUND", "StatusCode.ABORTED",
}


class TritonBackend:
    def __init__(self, manifest: ModelManifest, version: ModelVersion, url: str) -> None:
        self.model, self.version, self.url = manifest.name, version.version, url
        self.io = triton_io(manifest)
        self.timeout_s = manifest.triton.timeout_s
        self.instances = manifest.triton.instance_count
        # Readiness (and CT windows) run in threads; the asyncio client is made lazily in the
        # replica's event loop, the loop its channel belongs to.
        self.client = grpcclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
        self._aio: aioclient.InferenceServerClient | None = None
        self.inferer = sliding_window(manifest)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="triton")

    def ready(self) -> bool:
        try:
            return bool(self.client.is_model_ready(
                self.model, self.version, client_timeout=READY_TIMEOUT_S
            ))
        except InferenceServerException:
            return False

    async def run(self, inputs: list[np.ndarray], stop: Stop = never) -> list[np.ndarray]:
        if self.inferer is not None:
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(self.executor, self._volumes, inputs, stop)
        else:
            outputs = await self._batches(inputs)
        return check_outputs(inputs, outputs)

    async def _batches(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if self._aio is None:
            self._aio = aioclient.InferenceServerClient(self.url, channel_args=CHANNEL_ARGS)
        sizes = [len(x) for x in inputs]
        batch = np.concatenate(inputs) if len(inputs) > 1 else inputs[0]
        # One request per Triton instance, so they all work on this batch at once; never more
        # than Triton's max batch size, which it rejects.
        step = min(self.io.max_batch_size, math.ceil(len(batch) / self.instances))
        chunks = await asyncio.gather(
            *(self._infer(self._aio, batch[i : i + step]) for i in range(0, len(batch), step))
        )
        out = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
        return np.split(out, np.cumsum(sizes)[:-1])

    async def _infer(self, client: aioclient.InferenceServerClient, x: np.ndarray) -> np.ndarray:
        inp = aioclient.InferInput(self.io.input_name, list(x.shape), self.io.datatype)
        inp.set_data_from_numpy(np.ascontiguousarray(x))
        try:
            async for attempt in _reconnect(AsyncRetrying):
                with attempt:
                    result = await client.infer(self.model, [inp], model_version=self.version,
                                                client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise self._error(exc) from None
        return result.as_numpy(self.io.output_name)

    @torch.inference_mode()
    def _volumes(self, inputs: list[np.ndarray], stop: Stop) -> list[np.ndarray]:
        assert self.inferer is not None
        outputs = []
        for x in inputs:  # volumes differ in size: one sliding-window pass each
            y = self.inferer(torch.from_numpy(x), checked(self._window, stop))
            assert isinstance(y, torch.Tensor)
            outputs.append(y.numpy())
        return outputs

    def _window(self, x: torch.Tensor) -> torch.Tensor:
        """One sliding-window batch, sent from the worker thread with the blocking client."""
        arr = x.numpy()
        inp = grpcclient.InferInput(self.io.input_name, list(arr.shape), self.io.datatype)
        inp.set_data_from_numpy(np.ascontiguousarray(arr))
        try:  # a worker thread: tenacity's blocking sleep does not hold the event loop
            result = _reconnect(Retrying)(
                self.client.infer, self.model, [inp], model_version=self.version,
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            raise self._error(exc) from None
        return torch.from_numpy(result.as_numpy(self.io.output_name))

    def _error(self, exc: InferenceServerException) -> MedserveError:
        # Triton's text stays in the replica log (it names tensors and shapes, no pixel data);
        # the client gets Medserve's own message.
        status = exc.status() or ""
        log.warning("triton %s for %s version %s: %s", status, self.model, self.version,
                    exc.message())
        if status in RETRYABLE:
            return Unavailable(
                f"{self.model}: the inference server is unavailable; retry later",
                retry_after_s=RETRY_AFTER_S,
            )
        return MedserveError(f"{self.model}: the inference server failed the request")
