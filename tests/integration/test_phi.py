"""No patient data leaves through logs, metrics, the audit trail or error bodies.

One dedicated Medserve (its own Ray session directory, metrics port and audit file) gets
studies whose every identifying DICOM attribute holds a marker (tests/phi.py) on every imaging
path, success and error paths alike (error paths are where parsers echo values), OIP infer
requests and chat prompts carrying markers. Then the metrics are scraped, the server is
stopped (so every buffered log line is on disk), and every file the run wrote is searched.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML, RLELossless

from serving.testing.process import running_server
from serving.testing.samples import make_ct_series, make_png, make_radiograph, zip_series
from tests.conftest import MODEL_REPO, ROOT, TEST_LIMITS
from tests.integration.harness import write_config
from tests.phi import BIRTH_DATE, PREFIX, find_markers, mark, marker, replace_once
from tests.prom import ensure, eventually

DICOM = {"Content-Type": "application/dicom"}
JSON = {"Content-Type": "application/json"}
PROMPT = f"Patient {marker('PROMPT1')} (born {BIRTH_DATE}), {marker('PROMPT2')} Street: cough?"


@dataclass
class Exchange:
    name: str
    status: int
    body: bytes
    request_id: str | None


@dataclass
class Run:
    exchanges: list[Exchange]
    files: dict[str, bytes]  # every file the run wrote, by path
    metrics: bytes


def _png_with_text() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("PatientName", marker("PNGTEXT"))
    out = BytesIO()
    Image.open(BytesIO(make_png())).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def _encapsulated(data: bytes, transfer_syntax: str) -> bytes:
    """The instance declaring a compressed transfer syntax over a fragment of raw pixels."""
    ds = dcmread(BytesIO(data))
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.PixelData = encapsulate([ds.PixelData[:1000]])
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _series(**kw: object) -> list[bytes]:
    # In slice order, so that dropping one from the middle leaves a gap.
    parts = make_ct_series(slices=12, shuffle=False, **kw)  # type: ignore[arg-type]
    return [mark(p, i) for i, p in enumerate(parts)]


STOW = "/dicomweb/studies"


def _related(parts: list[bytes]) -> dict[str, Any]:
    boundary = "phi-test-boundary"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                    + p + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode()
    return {"content": body, "headers": {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}}


def _multipart(parts: list[bytes]) -> dict[str, object]:
    files = [("files", (f"{marker('FILENAME')}-{i}.dcm", p, "application/dicom"))
             for i, p in enumerate(parts)]
    return {"files": files}


def imaging_requests() -> Iterator[tuple[str, str, dict[str, object], int]]:
    """(name, path, httpx keyword arguments, expected status)."""
    cxr, ct = "/v1/imaging/cxr-triage/predict", "/v1/imaging/lung-nodule-ct/predict"
    dx = mark(make_radiograph(modality="DX", seed=3))
    yield "dx", cxr, {"content": dx, "headers": DICOM}, 200
    yield "dx-query-and-header", cxr + f"?patient={marker('QUERY')}", {
        "content": dx, "headers": {**DICOM, "X-Patient": marker("HEADER")}}, 200
    yield "mr-wrong-modality", cxr, {
        "content": mark(make_radiograph(modality="MR")), "headers": DICOM}, 422
    yield "truncated-pixels", cxr, {"content": dx[: len(dx) - 5000], "headers": DICOM}, 400
    yield "truncated-header", cxr, {"content": dx[:900], "headers": DICOM}, 400
    no_pixels = dx[: dx.rindex(b"\xe0\x7f\x10\x00")]  # cut at the PixelData tag
    yield "no-pixels", cxr, {"content": no_pixels, "headers": DICOM}, 400
    # Values pydicom warns about when read: a marker where a date and a number must be.
    next_tag = b"\x08\x00\x21"  # StudyDate's value is followed by SeriesDate's tag
    bad_date = replace_once(dx, b"19020304" + next_tag, marker("BADDATE")[:8].encode() + next_tag)
    yield "invalid-date-value", cxr, {"content": bad_date, "headers": DICOM}, 200
    windowed = mark(make_radiograph(window=(2000.0, 3000.0)))
    bad_window = replace_once(windowed, b"2000.0", marker("W")[:6].encode())
    yield "invalid-window-value", cxr, {"content": bad_window, "headers": DICOM}, 400
    yield "no-decoder-transfer-syntax", cxr, {"content": _encapsulated(dx, MPEG2MPML),
                                              "headers": DICOM}, 415
    yield "corrupt-rle-pixels", cxr, {"content": _encapsulated(dx, RLELossless),
                                      "headers": DICOM}, 400
    yield "png-text-chunk", cxr, {"content": _png_with_text(), "headers": {
        "Content-Type": "image/png"}}, 200
    yield "dicom-as-png", cxr, {"content": dx, "headers": {"Content-Type": "image/png"}}, 400
    # Client text in the URL and the headers: a model name, a version, a content type.
    yield "unknown-model-name", f"/v1/imaging/{marker('MODEL').lower()}/predict", {
        "content": dx, "headers": DICOM}, 404
    yield "unknown-version", f"/v1/imaging/cxr-triage/versions/{marker('VERSION')}/predict", {
        "content": dx, "headers": DICOM}, 404
    yield "content-type-marker", cxr, {"content": dx, "headers": {
        "Content-Type": f"application/{marker('CTYPE').lower()}"}}, 415
    series = _series()
    yield "ct-zip", ct, {"content": zip_series(series), "headers": {
        "Content-Type": "application/zip"}}, 200
    yield "ct-multipart", ct, _multipart(series), 200
    yield "ct-missing-slice", ct, _multipart(series[:5] + series[6:]), 400
    other = _series(seed=9)
    mixed = series[:6] + [replace_once(p, b"80914262775319468821.2", b"80914262775319468821.7")
                          for p in other[:6]]
    yield "ct-mixed-series", ct, {"content": zip_series(mixed), "headers": {
        "Content-Type": "application/zip"}}, 400
    dx_series = [mark(make_radiograph(seed=i), i) for i in range(3)]
    yield "dx-series-to-ct", ct, _multipart(dx_series), 422
    # STOW-RS into Medserve: a marked study analysed by a job (its logs are searched too; the
    # job store and spool, which must hold the instances and results, are outside the scan),
    # then the error paths: a series mixing studies, a part that is not DICOM, a broken body.
    yield "stow-ct", STOW, _related(series), 200
    other_study = [replace_once(p, b"80914262775319468821.1\x00", b"80914262775319468821.8\x00")
                   for p in other[:6]]
    yield "stow-mixed-studies", STOW, _related(series[:6] + other_study), 400
    yield "stow-not-dicom", STOW, _related([series[0], marker("NOTDICOM").encode() * 20]), 400
    whole = _related(series)
    yield "stow-broken", STOW, {**whole, "content": whole["content"][:5000]}, 400
    yield "ct-truncated-part", ct, _multipart([*series[:-1], series[-1][:2000]]), 400
    corrupt_zip = b"PK\x03\x04" + series[0][:4000]
    yield "ct-corrupt-zip", ct, {"content": corrupt_zip, "headers": {
        "Content-Type": "application/zip"}}, 400
    yield "ct-too-large", ct, {"content": series[0] * (TEST_LIMITS["max_series_bytes"]
                                                       // len(series[0]) + 1),
                               "headers": {"Content-Type": "application/zip"}}, 413


def oip_requests() -> Iterator[tuple[str, str, dict[str, object], int]]:
    url = "/v2/models/cxr-triage/infer"
    image = {"name": "image", "shape": [1, 1, 224, 224], "datatype": "FP32",
             "parameters": {"patient": marker("OIPPARAM")}}
    meta = {"id": marker("OIPID"), "parameters": {"accession": marker("OIPACC")}}
    data = np.zeros(224 * 224, np.float32).tolist()
    yield "oip-json", url, {"json": {**meta, "inputs": [{**image, "data": data}]}}, 200
    yield "oip-wrong-count", url, {"json": {**meta, "inputs": [{**image, "data": data[:9]}]}}, 400
    yield "oip-wrong-datatype", url, {"json": {**meta, "inputs": [
        {**image, "datatype": marker("DTYPE"), "data": data}]}}, 400
    yield "oip-input-name", url, {"json": {**meta, "inputs": [
        {**image, "name": marker("INPUTNAME"), "data": data}]}}, 400
    yield "oip-output-name", url, {"json": {**meta, "inputs": [{**image, "data": data}],
                                            "outputs": [{"name": marker("OUTPUTNAME")}]}}, 400
    yield "oip-malformed-json", url, {"content": f'{{"id": "{marker("BROKEN")}", '.encode(),
                                      "headers": JSON}, 400
    header = json.dumps({**meta, "inputs": [
        {**image, "parameters": {"binary_data_size": 224 * 224 * 4}}]}).encode()
    yield "oip-binary-truncated", url, {
        "content": header + b"\0" * 1000,
        "headers": {"Inference-Header-Content-Length": str(len(header)),
                    "Content-Type": "application/octet-stream"}}, 400


def chat_requests() -> Iterator[tuple[str, str, dict[str, object], int]]:
    url = "/v1/chat/completions"
    base = {"model": "clinical-llm", "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 4, "user": marker("USER"), "stop": [marker("STOP")]}
    yield "chat", url, {"json": base}, 200
    yield "chat-stream", url, {"json": {**base, "stream": True,
                                        "stream_options": {"include_usage": True}}}, 200
    yield "chat-adapter", url, {"json": {**base, "model": "clinical-llm:lung-oncology"}}, 200
    yield "chat-over-context", url, {"json": {**base, "messages": [
        {"role": "user", "content": PROMPT * 400}]}}, 400
    yield "chat-unknown-adapter", url, {"json": {**base, "model": "clinical-llm:no-such"}}, 404
    yield "chat-unknown-model", url, {"json": {**base, "model": marker("LLMNAME")}}, 404
    yield "chat-adapter-marker", url, {"json": {**base,
                                                "model": f"clinical-llm:{marker('ADAPTER')}"}}, 404
    yield "chat-invalid-field", url, {"json": {**base, "temperature": marker("TEMP")}}, 400
    yield "chat-extra-field", url, {"json": {**base, "patient": marker("EXTRA")}}, 400
    yield "chat-malformed-json", url, {"content": f'{{"messages": "{PROMPT}'.encode(),
                                       "headers": JSON}, 400
    yield "chat-too-large", url, {"json": {**base, "messages": [
        {"role": "user", "content": PROMPT * (TEST_LIMITS["max_chat_bytes"] // 50)}]}}, 413


def _files(*roots: Path) -> dict[str, bytes]:
    found = {}
    for root in roots:
        paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in paths:
            if not path.is_symlink():
                found[str(path)] = path.read_bytes()
    return found


def _metrics_text(url: str, wanted: Callable[[bytes], bool]) -> bytes:
    """Poll Ray's export port until the gateway's counters for this run have arrived."""
    import time

    deadline = time.monotonic() + 60
    text = b""
    while time.monotonic() < deadline:
        text = httpx.get(url, timeout=10).content
        if wanted(text):
            return text
        time.sleep(1)  # Ray reports every second in this run
    raise AssertionError("gateway metrics never arrived")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("phi")
    audit = tmp / "audit.jsonl"
    jobs_dir = tmp_path_factory.mktemp("phi-jobs")  # data a job must hold: not scanned
    config = write_config(tmp / "medserve.yaml", limits=TEST_LIMITS,
                          http={"request_timeout_s": 60}, audit={"path": str(audit)},
                          jobs={"store_path": str(jobs_dir / "jobs.sqlite"), "poll_s": 0.2})
    log = tmp / "server.log"
    requests = [*imaging_requests(), *oip_requests(), *chat_requests()]
    exchanges = []
    with running_server("--repo", str(MODEL_REPO), "--config", str(config), log=log, cwd=ROOT,
                        metrics=True, env={"RAY_metrics_report_interval_ms": "1000"}) as srv:
        with httpx.Client(base_url=srv.url, timeout=120) as client:
            for name, path, kwargs, _ in requests:
                r = client.post(path, **kwargs)  # type: ignore[arg-type]
                exchanges.append(Exchange(name, r.status_code, r.content,
                                          r.headers.get("x-request-id")))
                if name == "stow-ct" and r.status_code == 200:
                    job_url = r.headers["content-location"]
            # the STOW-RS job has run (and logged) before the server stops
            eventually(lambda: ensure(client.get(job_url).json()["status"] == "done"),
                       timeout_s=120)
        metrics = _metrics_text(
            f"http://127.0.0.1:{srv.metrics_port}/metrics",
            lambda t: b'route="/v1/chat/completions"' in t and b"status=\"413\"" in t)
        ray_tmp = srv.ray_tmpdir
    assert ray_tmp is not None
    # Every file the run wrote; one line per place (the audit file also sits under tmp).
    files = _files(tmp, ray_tmp)
    return Run(exchanges, files, metrics)


def test_every_request_took_the_path_it_was_built_for(run: Run) -> None:
    expected = {name: status for name, _, _, status in
                [*imaging_requests(), *oip_requests(), *chat_requests()]}
    got = {e.name: e.status for e in run.exchanges}
    assert got == expected, {n: (got[n], expected[n]) for n in got if got[n] != expected[n]}


def test_no_marker_in_any_error_body_or_imaging_result(run: Run) -> None:
    # Success bodies of OIP infer echo the client's own request `id` (the protocol says so)
    # and a chat completion is generated text; error bodies and imaging results must be clean.
    bodies = [(e.name, e.body) for e in run.exchanges
              if e.status >= 400 or e.name in ("dx", "ct-zip", "ct-multipart", "png-text-chunk")]
    assert len(bodies) > 20
    assert find_markers(bodies) == []


def test_no_marker_in_any_log_or_audit_line(run: Run) -> None:
    names = list(run.files)
    # The search covers what this run wrote: the server's own output, Serve's replica and
    # access logs, the raylet/GCS/worker logs and the audit trail.
    assert any(n.endswith("server.log") for n in names)
    assert any("/logs/serve/" in n and "replica" in n for n in names)
    assert any(n.endswith("audit.jsonl") for n in names)
    logs = b"".join(run.files.values())
    # The right run: Serve logged these very requests (by request id), and so did the audit.
    ids = [e.request_id for e in run.exchanges if e.request_id]
    assert len(ids) == len(run.exchanges)
    audit = next(data for n, data in run.files.items() if n.endswith("audit.jsonl"))
    assert all(i.encode() in audit for i in ids)
    assert all(i.encode() in logs for i in ids)
    assert find_markers(run.files) == []


def test_no_marker_in_metrics(run: Run) -> None:
    assert b"ray_medserve_requests_total" in run.metrics
    assert find_markers({"metrics": run.metrics}) == []


def test_the_search_finds_markers_in_every_rendering() -> None:
    pn = marker("000XF") + "^" + marker("000XG")
    for text in (pn, pn.replace("^", " "), pn.lower(), f"born {BIRTH_DATE[:4]}-02-03.",
                 "uid 2.25.80914262775319468821.9.0", f"{PREFIX.lower()}query"):
        assert find_markers({"x": f"log line: {text}".encode()}), text
    assert find_markers({"x": b"ts=1190102031 pid 19010203042"}) == []
