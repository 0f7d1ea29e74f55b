"""Priorities and admission control against a real Medserve with small admission limits.

One server for the module: cxr-triage on one replica behind a short gateway queue (overload is
cheap to create on 2 cores) and lung-nodule-ct behind a queue whose deadline is shorter than
one of its scans (requests that wait past it get 504 without running)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from loadtests.run.local import edited_repository
from loadtests.run.overload import Outcome, run_overload, send
from serving.observability.metrics import QUEUE_WAIT
from serving.repository.store import load_repository
from serving.testing.process import ServerProcess, running_server
from serving.testing.samples import make_png
from tests.conftest import MODEL_REPO, ROOT
from tests.integration.harness import binary_infer, metric_total, write_config
from tests.prom import eventually

CXR = "/v1/imaging/cxr-triage/predict"
CT_INFER = "/v2/models/lung-nodule-ct/infer"
CXR_ADMISSION = {"max_concurrent": 2, "max_queued": 4, "queue_timeout_s": 20}
CT_ADMISSION = {"max_concurrent": 1, "max_queued": 3, "queue_timeout_s": 0.3}
STAT_EVERY = 10  # every 10th arrival is stat, the rest routine


@pytest.fixture(scope="module")
def overload_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("overload")
    repo = edited_repository(MODEL_REPO, tmp / "repo", {
        "cxr-triage": {"scaling": {"min_replicas": 1, "max_replicas": 1,
                                   "max_ongoing_requests": 4},
                       "admission": CXR_ADMISSION},
        "lung-nodule-ct": {"admission": CT_ADMISSION},
    })
    config = write_config(tmp / "medserve.yaml", http={"request_timeout_s": 30})
    with running_server(
        "--repo", str(repo), "--config", str(config), log=tmp / "server.log", cwd=ROOT,
        metrics=True, env={"RAY_metrics_report_interval_ms": "1000"},
    ) as srv:
        yield srv


def test_stat_keeps_flowing_and_routine_is_shed_fast_at_3x_capacity(overload_server) -> None:
    slo_s = load_repository(MODEL_REPO).manifest("cxr-triage").slo.latency_threshold_s
    run = run_overload(overload_server.url, factor=3.0, duration_s=6.0, stat_every=STAT_EVERY)
    f = run.figures()
    statuses = sorted({o.status for o in run.outcomes})
    print(f"\ncapacity {f['capacity_per_s']:.1f} req/s, offered {f['offered_per_s']:.1f} req/s,"
          f" {f['requests']} requests: stat 200 {f['stat_ok']}, routine 200 {f['routine_ok']}, "
          f"shed {f['shed']} (refused {f['refused']}, preempted {f['preempted']}), "
          f"statuses {statuses}")
    print(f"stat p50 {f['stat_p50_ms']:.0f} ms, p95 {f['stat_p95_ms']:.0f} ms (SLO "
          f"{slo_s * 1e3:.0f} ms); routine 200 p95 {f['routine_ok_p95_ms']:.0f} ms")
    print(f"shed on arrival p50 {f['refused_p50_ms']:.1f} ms p99 {f['refused_p99_ms']:.1f} ms;"
          f" preempted p50 {f['preempted_p50_ms']:.1f} ms p99 {f['preempted_p99_ms']:.1f} ms")

    # Overload was real: routine requests were both admitted and shed.
    assert run.of("routine", 200) and run.shed, "no overload reached"
    # Stat was never shed while routine was admitted (nor timed out, nor failed).
    assert [o.status for o in run.outcomes if o.priority == "stat" and o.status != 200] == []
    assert all(o.priority == "routine" for o in run.shed)
    # Every shed answer is retryable and says when: 503 + Retry-After.
    assert all(o.retry_after and int(o.retry_after) >= 1 for o in run.shed)
    # Nothing admitted timed out, nothing failed otherwise: only 200 and 503.
    assert set(statuses) <= {200, 503}, statuses
    # Refused on arrival means answered at once: well inside the model's latency SLO.
    assert run.refused and f["refused_p99_ms"] / 1e3 < slo_s


def test_unknown_priority_is_a_400_naming_the_accepted_values(overload_server) -> None:
    r = httpx.post(overload_server.url + CXR, content=make_png(),
                   headers={"Content-Type": "image/png", "X-Priority": "asap"}, timeout=60)
    assert r.status_code == 400
    assert "stat, urgent, routine" in r.json()["error"] and "asap" not in r.text


def test_queued_past_the_deadline_gets_504_without_running(overload_server) -> None:
    """lung-nodule-ct: one scan in flight at a time and a 0.3 s queue deadline. Of a burst,
    the one admitted runs; those still queued at the deadline get 504, and the model's own
    per-request counter shows they never reached it."""
    volume = np.random.default_rng(3).standard_normal((1, 1, 96, 96, 96)).astype(np.float32)
    body, headers = binary_infer("volume", volume)
    counted = f"{QUEUE_WAIT}_count"
    before = metric_total(overload_server, counted, model="lung-nodule-ct")

    async def main() -> list[Outcome]:
        async with httpx.AsyncClient(base_url=overload_server.url, timeout=120) as client:
            return list(await asyncio.gather(*(
                send(client, "POST", CT_INFER, "routine", content=body,
                     headers=headers) for _ in range(4)
            )))

    outcomes = asyncio.run(main())
    statuses = sorted(o.status for o in outcomes)
    print(f"\nCT burst statuses {statuses}, latencies "
          f"{[round(o.latency_s, 2) for o in outcomes]} s")
    assert set(statuses) <= {200, 504} and 504 in statuses and 200 in statuses
    assert all("no capacity within" in o.body for o in outcomes if o.status == 504)
    ran = statuses.count(200)
    # One more request that runs: once the model's counter shows it, it shows every request
    # that ran before it (one replica, one flush): exactly the 200s plus this one.
    final = httpx.post(overload_server.url + CT_INFER, content=body, headers=headers,
                       timeout=120)
    assert final.status_code == 200

    def counted_all() -> float:
        value = metric_total(overload_server, counted, model="lung-nodule-ct")
        assert value >= before + ran + 1
        return value

    assert eventually(counted_all) == before + ran + 1
