"""A short soak: `make soak`'s code (loadtests/run/soak.py) for 3 minutes against the shared
server, with half the soak's radiographs: a minute-scale run on a shared 2-core machine
catches a fast leak and failures, not the slow drift the 30-minute soak is for."""

from __future__ import annotations

from pathlib import Path

import yaml

from loadtests.report.soak import SoakLimits, SoakPlan
from loadtests.run.gate import read_records
from loadtests.run.soak import run_soak
from loadtests.traffic.profiles import load_profile
from tests.conftest import MODEL_REPO, Server

PNG = b"\x89PNG\r\n\x1a\n"
# The 30-minute plan's sampling and windows scaled to 3 minutes (6 s, 30 s), but a whole
# minute of warm-up: the LLM replica fills its adapter slots (about 0.55 GiB each) with the
# first chats, which at the soak's rate takes longer than a scaled 18 s.
PLAN = SoakPlan.scaled(180).model_copy(update={"warmup_s": 60.0})
# Looser RSS growth than the soak's 10%: RSS in the first minutes still moves with allocator
# and cache warm-up. The p99s are reported, not judged: a 30 s window's p99 is its one or two
# slowest requests, and on a 2-core machine those are the ones a chat's decoding happened to
# share the cores with (cxr-triage's p99 went 758 -> 2652 ms between windows sent the same
# requests). The 30-minute soak's 5-minute windows judge the tail; a test times nothing.
SHORT = SoakLimits(rss_growth=0.25, p99_drift=None)
# The soak profile is ~50% of the reference machine's capacity. On a 2-core AVX2 host with
# slower cores it kept the CPU at ~80%, and at 98% for the minute the autoscaler's second
# cxr-triage replica loaded, when cxr-triage's p99 reached 22 s of the 30 s timeout. Its
# radiographs were most of that CPU (0.25 core-seconds each, 3 a second); half of them keep
# the short run a soak, not an overload test (test_overload's job). CT and chats stay as
# they are: at half their rates a 30 s replayed window held no CT study at all.
CXR_SHARE = 0.5


def lighter_soak(folder: Path) -> str:
    profile = load_profile("soak")
    cxr = profile.models["cxr-triage"]
    models = {**profile.models, "cxr-triage": cxr.model_copy(
        update={"rate_rps": (cxr.rate_rps or 0) * CXR_SHARE})}
    path = folder / "lighter-soak.yaml"
    path.write_text(yaml.safe_dump(profile.model_copy(update={"models": models})
                                   .model_dump(mode="json", exclude_none=True)))
    return str(path)


def test_a_short_soak_holds_memory_and_errors(server: Server, tmp_path: Path) -> None:
    result = run_soak(server, tmp_path, PLAN, SHORT, lighter_soak(tmp_path), repo=MODEL_REPO)
    print("\n" + result.text)
    assert not result.run_failed, (tmp_path / "loadtest.log").read_text()[-2000:]
    assert result.passed, result.text
    assert "p99 cxr-triage" in result.text  # reported
    driven = {r.model for r in read_records(tmp_path / "loadtest" / "records.jsonl")}
    assert driven == {"cxr-triage", "lung-nodule-ct", "clinical-llm"}
    assert (tmp_path / "soak.png").read_bytes()[:8] == PNG
    rows = (tmp_path / "soak_rss.csv").read_text().splitlines()
    assert any("ServeReplica" in row for row in rows)  # the replicas were sampled
