"""The SLO gate end to end: Locust in its own process, open loop, real reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from loadtests.run.stub import running_stub
from loadtests.traffic.profiles import PROFILES
from tests.conftest import MODEL_REPO, ROOT, Server

PNG = b"\x89PNG\r\n\x1a\n"


def medserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "serving.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def records(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def test_smoke_profile_passes_against_medserve(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "smoke"
    run = medserve("loadtest", "--profile", "smoke", "--host", server.url, "--out", str(out),
                   "--repo", str(MODEL_REPO))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "VERDICT: PASS" in run.stdout
    plan = json.loads((out / "plan.json").read_text())
    seen = {r["model"] for r in records(out)}
    assert seen == set(plan["models"])  # every model the repository serves was driven
    for name in ("locust_stats.csv", "locust.html", "slo_report.csv", "slo_report.txt"):
        assert (out / name).stat().st_size > 0
    assert (out / "slo_latency.png").read_bytes()[:8] == PNG
    stats = (out / "locust_stats.csv").read_text()
    assert all(model in stats for model in plan["models"])


def test_impossible_threshold_fails_the_gate(server: Server, tmp_path: Path) -> None:
    smoke = yaml.safe_load((PROFILES / "smoke.yaml").read_text())
    profile = {**smoke, "name": "impossible", "models": {"cxr-triage": {"rate_rps": 2.0}},
               "slo_overrides": {"cxr-triage": {"latency_threshold_s": 0.001}}}
    path = tmp_path / "impossible.yaml"
    path.write_text(yaml.safe_dump(profile))
    out = tmp_path / "out"
    run = medserve("loadtest", "--profile", str(path), "--host", server.url, "--duration", "8s",
                   "--out", str(out), "--repo", str(MODEL_REPO))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "VERDICT: FAIL" in run.stdout and "cxr-triage" in run.stdout
    assert all(r["ok"] for r in records(out))  # it failed on latency, not on errors


def test_a_server_stall_shows_in_the_open_loop_tail(tmp_path: Path) -> None:
    rate, duration, stall_at, stall_s = 20.0, 10.0, 3.0, 2.0
    profile = {"name": "stall", "duration_s": duration, "max_in_flight": 500,
               "request_timeout_s": 10, "models": {"cxr-triage": {"rate_rps": rate}},
               "payloads": {"radiograph_px": 64}}
    path = tmp_path / "stall.yaml"
    path.write_text(yaml.safe_dump(profile))
    out = tmp_path / "out"
    with running_stub(0.005, stall_at, stall_s) as url:
        medserve("loadtest", "--profile", str(path), "--host", url, "--out", str(out),
                 "--repo", str(MODEL_REPO))
    rows = records(out)
    latencies = sorted(float(r["latency_s"]) for r in rows if r["ok"])  # type: ignore[arg-type]
    assert len(latencies) == len(rows) > 0
    # About rate * stall_s requests were due during the stall; the first half of them waited
    # over stall_s / 2. A closed loop would have sent one request into it.
    waited = sum(1 for x in latencies if x > stall_s / 2)
    assert waited >= rate * stall_s / 4
    # Locust's own report carries the corrected latency too (ms, its 99th percentile column).
    stats = (out / "locust_stats.csv").read_text().splitlines()
    head, row = stats[0].split(","), stats[1].split(",")
    assert float(row[head.index("99%")]) >= stall_s / 2 * 1e3
