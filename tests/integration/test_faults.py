"""Replica faults against a real Medserve: kill a model replica's process under load.

One server for the module: cxr-triage on two replicas and the clinical LLM on one. The replica
processes are found by their Ray process titles and killed with SIGKILL, as a crash or the
OOM killer would; recovery is when a new replica reports its model loaded (the replicas'
`medserve_replica_ready` gauges)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from loadtests.run.local import edited_repository
from loadtests.run.overload import Outcome, send
from serving.testing.orthanc import OrthancProcess
from serving.testing.process import ServerProcess, running_server
from serving.testing.samples import make_png, make_radiograph
from serving.topology.applications import GATEWAY, deployment_name
from tests.conftest import MODEL_REPO, PACS_ENV, ROOT, TEST_JOBS
from tests.integration.harness import ready_replicas, write_config
from tests.integration.test_pacs import _analyze, _job, _srs, _store, _wait
from tests.orthanc import require
from tests.prom import eventually

CXR = "/v1/imaging/cxr-triage/predict"
CXR_DEPLOYMENT = deployment_name("cxr-triage", "1")
LLM_DEPLOYMENT = deployment_name("clinical-llm", "1")
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory: pytest.TempPathFactory, pacs: OrthancProcess | None
                 ) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("faults")
    repo = edited_repository(MODEL_REPO, tmp / "repo", {
        "cxr-triage": {"scaling": {"min_replicas": 2, "max_replicas": 2}},
        "clinical-llm": {"scaling": {"min_replicas": 1, "max_replicas": 1}},
    })
    sections: dict[str, Any] = {"http": {"request_timeout_s": 60}, "jobs": {
        **TEST_JOBS, "store_path": str(tmp / "jobs.sqlite")}}
    env = {"RAY_metrics_report_interval_ms": "1000"}
    if pacs is not None:  # the session's Orthanc, for the killed gateway's study job
        sections["pacs"] = {"url": pacs.dicomweb_url, "username_env": "MEDSERVE_PACS_USER",
                            "password_env": "MEDSERVE_PACS_PASSWORD"}
        env |= dict(zip(PACS_ENV, pacs.auth, strict=True))
    config = write_config(tmp / "medserve.yaml", **sections)
    with running_server("--repo", str(repo), "--config", str(config), log=tmp / "server.log",
                        cwd=ROOT, metrics=True, env=env) as srv:
        yield srv


def _ready(server: ServerProcess, model: str, want: int) -> set[str]:
    replicas = ready_replicas(server, model)
    assert len(replicas) == want, replicas
    return replicas


def _recovered(server: ServerProcess, deployment: str, model: str, killed: int,
               replicas_before: set[str], want: int):
    """Serve replaced the dead replica: a new process took its place and a replica that was
    not there before reports its model loaded and ready."""
    def check() -> None:
        pids = server.replica_pids(deployment)
        assert killed not in pids and len(pids) == want, pids
        assert ready_replicas(server, model) - replicas_before
    return check


def test_killing_an_imaging_replica_under_load_loses_no_request(
    fault_server: ServerProcess,
) -> None:
    # The server is ready once each model answers; the second replica may still be loading.
    replicas = eventually(lambda: _ready(fault_server, "cxr-triage", 2), 180)
    before = fault_server.replica_pids(CXR_DEPLOYMENT)
    assert len(before) == 2
    png = make_png()
    outcomes: list[Outcome] = []
    figures: dict[str, float] = {}

    async def main() -> None:
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=fault_server.url, timeout=90) as client:
            async def worker() -> None:
                while not stop.is_set():
                    outcomes.append(await send(client, "POST", CXR, "routine", content=png,
                                               headers={"Content-Type": "image/png"}))

            workers = [asyncio.create_task(worker()) for _ in range(4)]
            while sum(o.status == 200 for o in outcomes) < 12:  # steady load first
                await asyncio.sleep(0.05)  # polling the load's progress
            killed_at = time.monotonic()
            os.kill(before[0], signal.SIGKILL)
            served_before = len(outcomes)
            await asyncio.to_thread(eventually, _recovered(
                fault_server, CXR_DEPLOYMENT, "cxr-triage", before[0], replicas, 2), 180, 0.2)
            figures["recovery_s"] = time.monotonic() - killed_at
            figures["during"] = len(outcomes) - served_before
            target = len(outcomes) + 12  # and load keeps being served after recovery
            while len(outcomes) < target:
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.gather(*workers)

    asyncio.run(main())
    ok = sum(o.status == 200 for o in outcomes)
    retryable = [o for o in outcomes if o.status == 503 and o.retry_after]
    lost = [o for o in outcomes if o.status != 200 and o not in retryable]
    print(f"\nimaging replica killed: {len(outcomes)} requests ({figures['during']:.0f} "
          f"while recovering), 200 {ok}, retryable 503 {len(retryable)}, lost {len(lost)}; "
          f"replica count back to 2 after {figures['recovery_s']:.1f} s")
    assert lost == [], [(o.status, o.body[:200]) for o in lost]
    assert ok > 24


def _chat(stream: bool, max_tokens: int) -> dict:
    return {"model": "clinical-llm", "max_tokens": max_tokens, "temperature": 0,
            "stream": stream, "messages": [{"role": "user", "content": "Summarise the "
                                            "work-up of a solitary pulmonary nodule."}]}


def _events(lines: list[str]) -> list[dict | str]:
    out: list[dict | str] = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_killing_the_llm_replica_ends_streams_with_an_error_and_new_ones_succeed(
    fault_server: ServerProcess,
) -> None:
    (pid,) = fault_server.replica_pids(LLM_DEPLOYMENT)
    replicas = eventually(lambda: _ready(fault_server, "clinical-llm", 1))
    lines: list[str] = []
    with httpx.Client(base_url=fault_server.url, timeout=120) as client:
        with client.stream("POST", CHAT, json=_chat(True, 400)) as r:
            assert r.status_code == 200
            deltas = 0
            for line in r.iter_lines():
                lines.append(line)
                if '"content":' in line and '"content":""' not in line:
                    deltas += 1
                if deltas == 3:  # generation is under way: the replica dies mid-stream
                    killed_at = time.monotonic()
                    os.kill(pid, signal.SIGKILL)
                    deltas += 1
        ended_s = time.monotonic() - killed_at
        events = _events(lines)
        errors = [e for e in events if isinstance(e, dict) and "error" in e]
        print(f"\nLLM replica killed mid-stream: stream ended {ended_s:.2f} s later with "
              f"{errors}")
        assert events[-1] == "[DONE]"
        assert len(errors) == 1 and errors[0]["error"]["code"] == 503
        assert not any(isinstance(e, dict) and e.get("choices") and
                       e["choices"][0].get("finish_reason") for e in events)

        refused: list[tuple[int, str | None]] = []

        def new_stream_succeeds() -> float:
            reply = client.post(CHAT, json=_chat(True, 8))
            if reply.status_code != 200:
                refused.append((reply.status_code, reply.headers.get("retry-after")))
            assert reply.status_code == 200, reply.status_code
            new = _events(reply.text.splitlines())
            assert new[-1] == "[DONE]" and not any(
                isinstance(e, dict) and "error" in e for e in new)
            return time.monotonic() - killed_at

        back_s = eventually(new_stream_succeeds, 180, 0.5)
        eventually(_recovered(fault_server, LLM_DEPLOYMENT, "clinical-llm", pid, replicas, 1),
                   60, 0.5)
        print(f"a new stream succeeded {back_s:.1f} s after the kill; refused before: "
              f"{refused}")
        # While no replica was up, new streams waited for one or got a retryable 503.
        assert all(status == 503 and retry for status, retry in refused), refused


def test_a_study_job_survives_its_gateway_replica(
    fault_server: ServerProcess, pacs: OrthancProcess | None,
) -> None:
    """The gateway running a study job is killed; another takes the job up once its lease
    expires, and the result is stored once. (Here, not in test_pacs: a kill loses the killed
    gateway's unexported metrics, which the shared server's Prometheus test adds up.)"""
    orthanc = require(pacs)
    # One CR series of 30 images (cxr-triage runs per instance): a job of a few seconds.
    parts = [make_radiograph(modality="CR", seed=22, rows=200 + i) for i in range(30)]
    study = _store(orthanc, parts).StudyInstanceUID
    url = _analyze(fault_server, study).headers["location"]

    def running() -> None:
        job = _job(fault_server, url)
        assert job["status"] == "running", job
    eventually(running, timeout_s=30, every_s=0.05)
    (pid,) = fault_server.replica_pids(GATEWAY)
    os.kill(pid, signal.SIGKILL)
    job = _wait(fault_server, url, timeout_s=240)
    assert job["status"] == "done", job
    assert job["attempts"] >= 2 and len(job["results"]) == len(parts)
    assert len(_srs(orthanc, study)) == len(parts)  # one SR per image, however many runs
