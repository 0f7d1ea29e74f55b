"""The probe's hostile inputs against a real Medserve: each is refused before the work it
would cost, the server keeps serving, and the peak resident memory (VmHWM) of the proxy, the
gateway and every model replica is printed and bounded. On the main of the probe these cost
gigabytes (a 1 MB deflated DICOM pushed the replica to 2.8 GB; the CT resampling bomb to
5.2 GB; a gzip JSON body the gateway to 3.1 GB)."""

from __future__ import annotations

import gzip
import json
import struct
import time
import zipfile
from collections.abc import Iterator
from io import BytesIO

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from serving.testing import samples
from serving.testing.process import memory_mib
from tests.conftest import Server
from tests.integration.harness import binary_infer

BOUND_MIB = 1024  # what one refused request may add to any process's peak


def _peaks(server: Server) -> dict[str, float]:
    """Peak RSS by process, named by its actor (the title without the running method)."""
    peaks: dict[str, float] = {}
    for pid, title in server.serve_processes().items():
        try:
            peaks[f"{title.split('.')[0]} ({pid})"] = memory_mib(pid)[1]
        except OSError:  # a replica that went away meanwhile (autoscaling)
            continue
    return peaks


@pytest.fixture
def bounded(server: Server, request: pytest.FixtureRequest) -> Iterator[None]:
    before = _peaks(server)
    start = time.perf_counter()
    yield
    elapsed = time.perf_counter() - start
    after = _peaks(server)
    print(f"\n{request.node.name}: {elapsed:.2f} s; peak RSS (MiB) before -> after")
    for name, peak in sorted(after.items()):
        print(f"  {name}: {before.get(name, 0):.0f} -> {peak:.0f}")
    grown = {name: peak - before[name] for name, peak in after.items() if name in before}
    assert all(g < BOUND_MIB for g in grown.values()), grown
    ok = httpx.post(f"{server.url}/v1/imaging/cxr-triage/predict", timeout=120,
                    content=samples.make_radiograph(modality="DX"),
                    headers={"Content-Type": "application/dicom"})
    assert ok.status_code == 200  # and the server goes on serving


def test_a_deflated_dicom_bomb_is_413(server: Server, bounded: None) -> None:
    ds = pydicom.dcmread(BytesIO(samples.make_radiograph(modality="DX")))
    ds.add_new(0x00091010, "OB", bytes(160 << 20))  # 160 MiB of zeros in a private element
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert len(out.getvalue()) < 1 << 20
    r = httpx.post(f"{server.url}/v1/imaging/cxr-triage/predict", content=out.getvalue(),
                   headers={"Content-Type": "application/dicom"}, timeout=120)
    assert r.status_code == 413, r.text


def test_a_ct_resampling_bomb_is_413(server: Server, bounded: None) -> None:
    series = samples.make_ct_series(slices=3, rows=16, cols=16, pixel_spacing=(140.0, 140.0),
                                    slice_thickness=140.0, nodules=())
    r = httpx.post(f"{server.url}/v1/imaging/lung-nodule-ct/predict",
                   content=samples.zip_series(series),
                   headers={"Content-Type": "application/zip"}, timeout=120)
    assert r.status_code == 413 and "voxels" in r.text, r.text


def test_an_oip_batch_past_max_batch_size_is_413(server: Server, bounded: None) -> None:
    body, headers = binary_infer("image", np.zeros((64, 1, 224, 224), np.float32))
    r = httpx.post(f"{server.url}/v2/models/cxr-triage/infer", content=gzip.compress(body),
                   headers={**headers, "Content-Encoding": "gzip"}, timeout=120)
    assert r.status_code == 413, r.text


def test_a_gzip_json_bomb_is_413(server: Server, bounded: None) -> None:
    bomb = (b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": ['
            + b"0," * (128 << 20) + b"0]}]}")
    body = gzip.compress(bomb, compresslevel=9)
    assert len(body) < 1 << 20
    r = httpx.post(f"{server.url}/v2/models/cxr-triage/infer", content=body, timeout=120,
                   headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 413, r.text
    assert json.loads(r.text)["error"]


def test_a_codestream_larger_than_its_header_is_400(server: Server, bounded: None) -> None:
    """A real JPEG 2000 radiograph (pydicom's) whose SIZ claims 16384 x 16384: the decoder
    would allocate that before failing (+1.3 GB and 4.7 s on the probe's main)."""
    ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    ds.Modality = "DX"
    pixels = bytearray(ds.PixelData)
    struct.pack_into(">II", pixels, pixels.find(b"\xff\x4f\xff\x51") + 8, 16384, 16384)
    ds.PixelData = bytes(pixels)
    out = BytesIO()
    ds.save_as(out)
    r = httpx.post(f"{server.url}/v1/imaging/cxr-triage/predict", content=out.getvalue(),
                   headers={"Content-Type": "application/dicom"}, timeout=120)
    assert r.status_code == 400 and "dimensions" in r.text, r.text


def test_the_largest_colour_png_allowed_is_served_within_the_bound(
    server: Server, bounded: None
) -> None:
    """8192 x 8192 RGB (195 KB on the wire) peaked at 3.2 GB on the probe's main."""
    png = BytesIO()
    Image.new("RGB", (8192, 8192)).save(png, format="PNG")
    r = httpx.post(f"{server.url}/v1/imaging/cxr-triage/predict", content=png.getvalue(),
                   headers={"Content-Type": "image/png"}, timeout=120)
    assert r.status_code == 200, r.text


def test_a_zip_of_non_dicom_members_is_not_inflated(server: Server, bounded: None) -> None:
    """Members that are not DICOM are skipped after their first 64 KiB (the probe's 512 MiB of
    them grew the CT replica by ~512 MB per request)."""
    series = samples.make_ct_series(slices=8, rows=32, cols=32, nodules=())
    junk = {f"junk/{i}.bin": bytes(7 << 20) for i in range(4)}  # 28 MiB, under the limit
    archive = BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in junk.items():
            z.writestr(name, data)
    r = httpx.post(f"{server.url}/v1/imaging/lung-nodule-ct/predict",
                   content=archive.getvalue(), headers={"Content-Type": "application/zip"},
                   timeout=120)
    assert r.status_code == 400 and "no DICOM" in r.text, r.text
    with zipfile.ZipFile(archive, "a", zipfile.ZIP_DEFLATED) as z:
        for i, part in enumerate(series):
            z.writestr(f"ct/{i}.dcm", part)
    r = httpx.post(f"{server.url}/v1/imaging/lung-nodule-ct/predict",
                   content=archive.getvalue(), headers={"Content-Type": "application/zip"},
                   timeout=120)
    assert r.status_code == 200, r.text


def test_headers_past_the_limit_are_431_before_any_work(server: Server, bounded: None) -> None:
    """20,000 headers and a 16 MiB header were answered 200 on the probe's main. Refused in
    Serve's proxy (its middleware callback), so the gateway's peak stays where it was."""
    url = f"{server.url}/v2/health/live"
    many = [(f"x-h{i}", "1") for i in range(20_000)]
    assert httpx.get(url, headers=many, timeout=60).status_code == 431
    assert httpx.get(url, headers={"x-big": "1" * (16 << 20)}, timeout=60).status_code == 431
    assert httpx.get(url, headers={"x-small": "1" * 1000}, timeout=60).status_code == 200
