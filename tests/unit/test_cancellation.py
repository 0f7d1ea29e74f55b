"""Work no caller waits for stops at its next chunk (no Ray): a CT series at its next
instance, a batch at its next sliding window or chunk (the real torch backend of each demo
model, its network counted)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset

from serving.backends.torch_backend import TorchBackend
from serving.cancellation import Cancelled
from serving.imaging import dicom
from serving.repository.store import load_repository
from serving.testing import samples
from tests.conftest import MODEL_REPO


def backend(model: str) -> TorchBackend:
    repo = load_repository(MODEL_REPO)
    manifest = repo.manifest(model)
    version = manifest.version(manifest.served_version)
    return TorchBackend(manifest, version, repo.verify(model, version), "cpu")


def counted(net: Callable[[torch.Tensor], torch.Tensor], give_up_after: int,
            given_up: threading.Event) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[int]]:
    calls = [0]

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == give_up_after:
            given_up.set()  # the caller goes away while this pass runs
        return net(x)

    return forward, calls


@pytest.mark.parametrize(("model", "shape", "passes"), [
    ("lung-nodule-ct", (1, 1, 128, 128, 128), 14),  # 27 windows of 64^3, 2 per pass
    ("cxr-triage", (32, 1, 224, 224), 4),  # max_batch_size 8 per pass
])
def test_work_stops_at_the_next_pass_once_no_one_waits(
    model: str, shape: tuple[int, ...], passes: int
) -> None:
    b = backend(model)
    given_up = threading.Event()
    x = np.zeros(shape, np.float32)
    b.net, calls = counted(b.net, give_up_after=2, given_up=given_up)  # type: ignore[assignment]
    with pytest.raises(Cancelled):
        asyncio.run(b.run([x], stop=given_up.is_set))
    assert calls[0] == 2  # of `passes`: nothing ran after the flag was seen

    given_up.clear()
    b.net, calls = counted(b.net, give_up_after=passes + 1, given_up=given_up)  # type: ignore
    (y,) = asyncio.run(b.run([x], stop=given_up.is_set))
    assert calls[0] == passes and len(y) == shape[0]  # waited for: runs to the end


def test_a_series_stops_decoding_at_the_next_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    parts = samples.make_ct_series(slices=20, rows=16, cols=16, nodules=())
    read = dicom._read
    reads = [0]
    given_up = threading.Event()

    def counted_read(data: bytes, where: str) -> Dataset:
        reads[0] += 1
        if reads[0] == 5:
            given_up.set()
        return read(data, where)

    monkeypatch.setattr(dicom, "_read", counted_read)
    with pytest.raises(Cancelled):
        dicom.decode_series(parts, ["CT"], stop=given_up.is_set)
    assert reads[0] == 5  # of 20
    given_up.clear()
    reads[0] = -100  # never reaches 5 again: runs to the end
    assert dicom.decode_series(parts, ["CT"], stop=given_up.is_set).hu.shape[2] == 20
