"""A replica runs its smallest and largest forward pass before it is ready, on its inference
thread, so the memory and the graph specialisation those shapes need are taken at start-up."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from serving.backends.onnx_backend import OnnxBackend
from serving.backends.torch_backend import TorchBackend
from serving.repository.store import load_repository
from tests.conftest import MODEL_REPO
from tests.unit.test_onnx import _tiny, _tiny_manifest


def _record(backend: TorchBackend | OnnxBackend) -> list[tuple[tuple[int, ...], str]]:
    calls: list[tuple[tuple[int, ...], str]] = []
    forward = backend.forward

    def recorded(x: np.ndarray) -> np.ndarray:
        calls.append((x.shape, threading.current_thread().name))
        return forward(x)

    backend.forward = recorded  # type: ignore[method-assign]
    return calls


def test_torch_models_warm_up_with_one_and_a_full_batch_or_window_batch() -> None:
    repo = load_repository(MODEL_REPO)
    cxr = repo.manifest("cxr-triage")
    backend = TorchBackend(cxr, cxr.version("1"), repo.verify(cxr.name, cxr.version("1")), "cpu")
    calls = _record(backend)
    backend.warm_up(cxr)
    full = cxr.batching.max_batch_size
    assert [shape for shape, _ in calls] == [(1, 1, 224, 224), (full, 1, 224, 224)]
    assert all(thread.startswith("torch") for _, thread in calls)  # the inference thread

    ct = repo.manifest("lung-nodule-ct")
    backend = TorchBackend(ct, ct.version("1"), repo.verify(ct.name, ct.version("1")), "cpu")
    calls = _record(backend)
    backend.warm_up(ct)
    roi = tuple(ct.preprocessing.roi_size)  # type: ignore[union-attr]
    windows = ct.preprocessing.sw_batch_size  # type: ignore[union-attr]
    assert [shape for shape, _ in calls] == [(1, 1, *roi), (windows, 1, *roi)]


def test_a_fixed_batch_onnx_graph_warms_up_with_its_one_shape(tmp_path: Path) -> None:
    for batch, passes in ((None, [1, 8]), (4, [1])):  # a padded pass of 1 is the graph's 4
        path = tmp_path / f"tiny-{batch}.onnx"
        _tiny(path, batch=batch)
        manifest = _tiny_manifest(path)
        backend = OnnxBackend(manifest, path, "cpu")
        calls = _record(backend)
        backend.warm_up(manifest)
        assert [shape[0] for shape, _ in calls] == passes
        assert all(thread.startswith("onnxruntime") for _, thread in calls)
