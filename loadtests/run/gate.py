"""The SLO gate: run a profile open-loop with Locust, judge every model against its SLO.

Locust runs as a subprocess (`python -m locust`), so gevent's monkey-patching never reaches
this process, Ray, or pytest. It writes Locust's CSV and HTML reports; this module reads the
per-request records the Locust process leaves and writes the SLO report next to them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from loadtests.generator.openloop import Record
from loadtests.generator.workloads import auth_headers
from loadtests.report import slo_report
from loadtests.report.slo import ModelResult, evaluate, slo_of
from loadtests.traffic.profiles import all_manifests, build_plan, load_profile
from serving.repository.store import load_repository

# Run by path, never imported here: Locust (gevent) must stay out of this process.
LOCUSTFILE = Path(__file__).resolve().parents[1] / "generator" / "locustfile.py"
STARTUP_S = 60.0  # Locust start-up and payload building, on top of schedule and drain


@dataclass(frozen=True)
class GateResult:
    passed: bool
    run_failed: bool  # Locust itself failed: no verdict on the deployment
    results: list[ModelResult]
    text: str
    out: Path


def parse_duration(value: str) -> float:
    """'90', '90s', '2m', '1h' -> seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    v = value.strip().lower()
    seconds = float(v[:-1]) * units[v[-1]] if v and v[-1] in units else float(v)
    if seconds <= 0:
        raise ValueError("duration must be positive")
    return seconds


def read_records(path: Path) -> list[Record]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        raw = json.loads(line)
        out.append(Record(**raw))
    return out


def run_locust(plan_path: Path, host: str, out: Path, timeout_s: float) -> int:
    """Run Locust headless on a plan; its own exit code says nothing about SLOs."""
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
           "--csv", str(out / "locust"), "--html", str(out / "locust.html"),
           "--exit-code-on-error", "0", "--loglevel", "WARNING", "--only-summary"]
    env = {**os.environ, "MEDSERVE_LOADTEST_PLAN": str(plan_path)}
    with (out / "locust.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return -9


def run_gate(
    profile_name: str, host: str, out: Path, repo: Path, duration_s: float | None = None
) -> GateResult:
    profile = load_profile(profile_name)
    repository = load_repository(repo)
    out.mkdir(parents=True, exist_ok=True)
    records_path = out / "records.jsonl"
    records_path.unlink(missing_ok=True)
    plan, notes = build_plan(profile, repository, str(records_path), duration_s)
    auth_headers(plan.profile.tenants)  # a missing key fails here, not as 401s in the run
    unknown = set(plan.profile.slo_overrides) - set(plan.profile.models)
    if unknown:
        raise ValueError(f"slo_overrides name models the profile does not drive: {unknown}")
    manifests = all_manifests(repository)
    slos = {m: slo_of(m, manifests[m], plan.profile.slo_overrides.get(m)) for m in plan.models}
    plan_path = out / "plan.json"
    plan_path.write_text(plan.model_dump_json(indent=2))

    duration = plan.profile.duration_s
    code = run_locust(plan_path, host, out, duration + plan.drain_s + STARTUP_S)
    records = read_records(records_path)
    if code != 0:
        notes.append(f"locust exited with {code}; see {out / 'locust.log'}")
    results = [evaluate(slos[m], [r for r in records if r.model == m], duration)
               for m in sorted(plan.models)]
    rates = ", ".join(f"{m} {s.rate_rps:g}/s" for m, s in sorted(plan.models.items()))
    title = (f"Medserve SLO gate: profile {plan.profile.name} ({plan.profile.shape.kind}, "
             f"{duration:g} s, open loop, base rates {rates}) against {host}")
    passed = code == 0 and bool(results) and all(r.passed for r in results)
    body = slo_report.text(title, results, notes, passed)
    (out / "slo_report.txt").write_text(body)
    slo_report.write_csv(out / "slo_report.csv", results)
    slo_report.plot(out / "slo_latency.png", results, records)
    return GateResult(passed, code != 0, results, body, out)
