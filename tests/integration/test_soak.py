"""A short soak: `make soak`'s code (loadtests/run/soak.py) for 3 minutes against the shared
server, with looser limits: a minute-scale run on a shared 2-core machine catches a fast leak,
failures and a collapsing tail, not the slow drift the 30-minute soak is for."""

from __future__ import annotations

from pathlib import Path

from loadtests.report.soak import SoakLimits, SoakPlan
from loadtests.run.soak import run_soak
from tests.conftest import MODEL_REPO, Server

PNG = b"\x89PNG\r\n\x1a\n"
# The 30-minute plan's sampling and windows scaled to 3 minutes (6 s, 30 s), but a whole
# minute of warm-up: the LLM replica fills its adapter slots (about 0.55 GiB each) with the
# first chats, which at the soak's rate takes longer than a scaled 18 s.
PLAN = SoakPlan.scaled(180).model_copy(update={"warmup_s": 60.0})
# Looser than the soak's 10% / 20%: a 30 s window's p99 is its few slowest requests, and
# RSS in the first minutes still moves with allocator and cache warm-up.
SHORT = SoakLimits(rss_growth=0.25, p99_drift=1.0)


def test_a_short_soak_holds_memory_errors_and_tail(server: Server, tmp_path: Path) -> None:
    result = run_soak(server, tmp_path, PLAN, SHORT, repo=MODEL_REPO)
    print("\n" + result.text)
    assert not result.run_failed, (tmp_path / "loadtest.log").read_text()[-2000:]
    assert result.passed, result.text
    assert (tmp_path / "soak.png").read_bytes()[:8] == PNG
    rows = (tmp_path / "soak_rss.csv").read_text().splitlines()
    assert any("ServeReplica" in row for row in rows)  # the replicas were sampled
