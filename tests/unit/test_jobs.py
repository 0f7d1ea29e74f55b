"""Study jobs without a server: the SQLite store's leases, and the runner and PACS client
against a PACS that is down (a closed port) or too slow (a socket that never answers)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.dicomweb.pacs import Pacs
from serving.errors import Unavailable
from serving.jobs.service import StudyJobs
from serving.jobs.store import JobStore
from serving.net import free_port
from serving.protocol.jobs import JobResult
from serving.protocol.priority import Priority
from serving.repository.store import load_repository
from serving.schema.cluster import ClusterConfig, JobsConfig, Limits, PacsConfig
from tests.conftest import MODEL_REPO

STUDY = "1.2.826.0.1.3680043.8.498.1"


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite")


def test_claims_go_most_urgent_first_then_oldest(store: JobStore) -> None:
    routine = store.create(STUDY, ["cxr-triage"], None, Priority.ROUTINE)
    stat = store.create(STUDY, ["cxr-triage"], None, Priority.STAT)
    routine_2 = store.create(STUDY, ["cxr-triage"], None, Priority.ROUTINE)
    order = [store.claim("w", 30, 3)[0].id for _ in range(3)]
    assert order == [stat.id, routine.id, routine_2.id]
    assert store.claim("w", 30, 3) is None


def test_a_lost_worker_s_job_is_taken_again_once_its_lease_expires(store: JobStore) -> None:
    job = store.create(STUDY, ["cxr-triage"], "clinic-a", Priority.ROUTINE)
    claimed, tenant = store.claim("dead", 0.2, 3)
    assert claimed.id == job.id and claimed.attempts == 1 and tenant == "clinic-a"
    assert store.claim("alive", 30, 3) is None  # the lease still holds
    time.sleep(0.3)
    again, _ = store.claim("alive", 30, 3)
    assert again.id == job.id and again.attempts == 2
    # the dead worker, had it only been slow, can no longer write over the new run
    assert not store.finish(job.id, "dead", [], [])
    result = JobResult(model="cxr-triage", version="1", series_instance_uid="1.2",
                       sop_instance_uid="2.25.1", findings=14)
    assert store.finish(job.id, "alive", [result], [])
    done = store.get(job.id, "clinic-a")
    assert done.status == "done" and done.results == [result]


def test_a_job_that_keeps_losing_its_worker_fails_with_a_reason(store: JobStore) -> None:
    job = store.create(STUDY, ["cxr-triage"], None, Priority.ROUTINE)
    for _ in range(2):
        assert store.claim("w", 0.05, 2) is not None
        time.sleep(0.1)
    assert store.claim("w", 0.05, 2) is None
    failed = store.get(job.id, None)
    assert failed.status == "failed" and "gave up after 2 attempts" in failed.reason


def test_a_job_is_only_visible_to_its_tenant(store: JobStore) -> None:
    job = store.create(STUDY, ["cxr-triage"], "clinic-a", Priority.ROUTINE)
    assert store.get(job.id, "clinic-a") is not None
    assert store.get(job.id, "clinic-b") is None and store.get(job.id, None) is None


def test_a_job_sent_back_waits_its_delay(store: JobStore) -> None:
    job = store.create(STUDY, ["cxr-triage"], None, Priority.ROUTINE)
    store.claim("w", 30, 3)
    assert store.retry_later(job.id, "w", "PACS busy", delay_s=0.3)
    assert store.claim("w", 30, 3) is None
    time.sleep(0.35)
    again, _ = store.claim("w", 30, 3)
    assert again.id == job.id and again.reason == "PACS busy"


@pytest.fixture
def silent_pacs() -> Iterator[str]:
    """A server that accepts connections and never answers: a PACS that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/dicom-web"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


@pytest.mark.parametrize("kind", ["down", "slow"])
def test_a_pacs_that_is_down_or_slow_is_unavailable_after_bounded_retries(kind, silent_pacs
                                                                          ) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web" if kind == "down" else silent_pacs
    pacs = Pacs(PacsConfig(url=url, attempts=3, backoff_s=0.05, timeout_s=0.3), Limits())
    start = time.perf_counter()
    with pytest.raises(Unavailable) as err:
        pacs.series(STUDY)
    elapsed = time.perf_counter() - start
    assert err.value.retry_after_s and err.value.retry_after_s > 0
    assert STUDY not in err.value.message
    # three tries with back-off: at least the waits between them, and never a hang
    assert 0.1 <= elapsed < (3 * 0.3 * 2 + 1 if kind == "slow" else 2)


def test_the_runner_retries_a_job_with_back_off_then_fails_it_with_the_reason(
    tmp_path: Path,
) -> None:
    down = PacsConfig(url=f"http://127.0.0.1:{free_port()}/dicom-web", attempts=1,
                      backoff_s=0.05, timeout_s=1)
    config = ClusterConfig(pacs=down, jobs=JobsConfig(
        store_path=str(tmp_path / "jobs.sqlite"), lease_s=5, poll_s=0.05, max_attempts=3))
    called = []

    async def predict(model, payload, priority):  # never reached: the PACS is down
        called.append(model)
        raise AssertionError

    jobs = StudyJobs(config, load_repository(MODEL_REPO).models, predict)
    job = jobs.store.create(STUDY, ["cxr-triage"], None, Priority.ROUTINE)

    async def run() -> None:
        jobs.runner.ensure_started()
        deadline = time.monotonic() + 10
        while jobs.store.get(job.id, None).status not in ("failed", "done"):
            assert time.monotonic() < deadline, jobs.store.get(job.id, None)
            await asyncio.sleep(0.05)

    asyncio.run(run())
    failed = jobs.store.get(job.id, None)
    assert failed.status == "failed" and failed.attempts == 3 and not called
    assert failed.reason.startswith("gave up after 3 attempts; last: PACS search failed")


def test_submitting_needs_a_uid_and_models_the_caller_may_use(tmp_path: Path) -> None:
    pacs = PacsConfig(url=f"http://127.0.0.1:{free_port()}/dicom-web", attempts=1)
    config = ClusterConfig(pacs=pacs, jobs=JobsConfig(store_path=str(tmp_path / "j.sqlite")))

    async def predict(model, payload, priority):
        raise AssertionError

    jobs = StudyJobs(config, load_repository(MODEL_REPO).models, predict)

    def submit(study: str, models, may_use=lambda m: True):
        return asyncio.run(jobs.submit(study, models, None, Priority.ROUTINE, may_use))

    for bad in ("1.2.abc", "", "1." * 40, "1.2.3; DROP TABLE jobs"):
        with pytest.raises(Exception, match="must be a DICOM UID"):
            submit(bad, None)
    with pytest.raises(Exception, match="may not use the requested model"):
        submit(STUDY, ["cxr-triage"], may_use=lambda m: m != "cxr-triage")
    with pytest.raises(Exception, match="may not use any imaging model"):
        submit(STUDY, None, may_use=lambda m: False)
    with pytest.raises(Unavailable):  # a valid request reaches the (down) PACS
        submit(STUDY, ["cxr-triage"])


def test_without_a_pacs_a_received_study_s_sr_stays_with_its_job(tmp_path: Path) -> None:
    """STOW-RS to a cluster with no PACS: the job reads the spooled instances, and its SR is
    kept for `GET /v1/jobs/{id}/results/{uid}`; the instances are removed once it has run."""
    from io import BytesIO

    from pydicom import dcmread

    from serving.imaging.pipeline import make_pipeline
    from serving.results.encode import encode_result
    from serving.testing.samples import make_radiograph

    repo = load_repository(MODEL_REPO)
    config = ClusterConfig(jobs=JobsConfig(store_path=str(tmp_path / "jobs.sqlite"),
                                           poll_s=0.05))

    async def predict(model, payload, priority):
        manifest = repo.manifest(model)
        _, source = make_pipeline(manifest).prepare(payload)
        findings = [{"label": label, "probability": 0.5} for label in manifest.labels]
        return "1", {"findings": findings, "encoded": encode_result(
            payload.result, manifest, "1", findings, source.headers)}

    jobs = StudyJobs(config, repo.models, predict)
    image = make_radiograph(seed=41)

    async def run():
        received = await jobs.receive([image], None, None, Priority.ROUTINE, lambda m: True)
        while (job := await jobs.get(received.job.id, None)).status not in ("done", "failed"):
            await asyncio.sleep(0.05)
        return job

    job = asyncio.run(run())
    assert job.status == "done" and job.source == "stow" and job.models == ["cxr-triage"], job
    (result,) = job.results
    sr = dcmread(BytesIO(asyncio.run(jobs.result(job.id, result.sop_instance_uid, None))))
    assert sr.SOPInstanceUID == result.sop_instance_uid
    assert sr.StudyInstanceUID == dcmread(BytesIO(image)).StudyInstanceUID
    assert not (jobs.spool.root / job.id / "inputs").exists()
    with pytest.raises(Exception, match="no such result"):
        asyncio.run(jobs.result(job.id, "1.2.3", None))
    with pytest.raises(Exception, match="no such job"):
        asyncio.run(jobs.result(job.id, result.sop_instance_uid, "another-tenant"))
