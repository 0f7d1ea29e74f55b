"""The soak: the `soak` profile through `medserve loadtest` against a Medserve this process
can see, every Medserve process's RSS sampled meanwhile, then the drift report.

`make soak` is `python -m loadtests.run.soak`: it starts a local Medserve (the repository and
`medserve.yaml`, as `make serve`), runs 30 minutes and writes soak_report.txt, soak_rss.csv and
soak.png under --out (the gate's own reports under --out/loadtest). Exit 0 when every soak
check holds, 1 when one does not, 2 when the run itself failed. The SLO gate's verdict is
reported beside the checks but does not decide them: the soak is about drift.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from loadtests.report import soak as report
from loadtests.run.gate import STARTUP_S, parse_duration, read_records
from loadtests.traffic.profiles import load_profile
from serving.testing.process import ServerProcess, memory_mib, running_server

ROOT = Path(__file__).resolve().parents[2]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The proxy's access line ends "-- POST /v1/imaging/{model}/predict 503 12.3ms".
ACCESS_STATUS = re.compile(r" -- [A-Z]+ \S+ (\d{3}) [\d.]+ms$")
SHOWN_LOG_LINES = 20  # of what Serve logged, with a failed soak
LOG_LINE_CHARS = 300


@dataclass(frozen=True)
class SoakResult:
    passed: bool
    run_failed: bool  # the load test itself failed: no verdict on the server
    gate_code: int  # `medserve loadtest`'s exit: 0 SLO met, 1 missed, 2 run failed
    text: str
    out: Path


def process_name(cmdline: str) -> str:
    """A readable name for a process: Ray's title, a module, a script or a binary."""
    argv = cmdline.split()
    if not argv:
        return "?"
    if argv[0].startswith("ray::"):
        return argv[0].split(".")[0]  # Ray appends `.method` while a task runs
    if Path(argv[0]).name.startswith("python"):
        if "-m" in argv[:-1]:
            return " ".join(argv[argv.index("-m") + 1:][:2])
        return Path(next((a for a in argv[1:] if a.endswith(".py")), argv[0])).name
    return Path(argv[0]).name


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def sample(server: ServerProcess, t_s: float) -> list[report.RssSample]:
    out = []
    for pid, cmdline in server.session_processes():
        with contextlib.suppress(OSError, KeyError):  # gone between the listing and the read
            out.append(report.RssSample(t_s, pid, process_name(cmdline), memory_mib(pid)[0],
                                        cpu_seconds(pid)))
    return out


def log_sizes(server: ServerProcess) -> dict[Path, int]:
    return {path: path.stat().st_size for path in server.serve_logs()}


def served_trouble(server: ServerProcess, since: dict[Path, int]) -> list[str]:
    """What Serve logged after `since` (log sizes) that a failed request could come from:
    warnings, errors, and the proxy's access lines of answers other than 2xx."""
    out = []
    for path in server.serve_logs():
        with path.open("rb") as log:
            log.seek(since.get(path, 0))
            for raw in log:
                line = raw.decode(errors="replace").rstrip()
                status = ACCESS_STATUS.search(line) if path.name.startswith("proxy") else None
                if line.startswith(("WARNING", "ERROR", "CRITICAL")) or \
                        (status is not None and not status[1].startswith("2")):
                    out.append(f"{path.name}: {line}"[:LOG_LINE_CHARS])
    return out


def run_soak(server: ServerProcess, out: Path, plan: report.SoakPlan,
             limits: report.SoakLimits, profile: str = "soak",
             repo: Path = ROOT / "model_repo") -> SoakResult:
    out.mkdir(parents=True, exist_ok=True)
    gate_out = out / "loadtest"
    cmd = [sys.executable, "-m", "serving.cli", "loadtest", "--profile", profile,
           "--host", server.url, "--duration", f"{plan.duration_s:g}s", "--out", str(gate_out),
           "--repo", str(repo)]
    drain = load_profile(profile).request_timeout_s + 5.0
    deadline = plan.duration_s + drain + 2 * STARTUP_S
    rss: list[report.RssSample] = []
    logs_before = log_sizes(server)
    with (out / "loadtest.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)
        start = time.monotonic()
        try:
            # One sample per period until the load test exits: its wait is the clock.
            for n in range(int(deadline / plan.sample_s) + 1):
                rss += sample(server, time.monotonic() - start)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.0, start + (n + 1) * plan.sample_s
                                          - time.monotonic()))
                    break
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    code = proc.returncode
    records = read_records(gate_out / "records.jsonl")
    # RSS past the schedule's end is drain, not load: the checks read the schedule only.
    rss = [s for s in rss if s.t_s <= plan.duration_s + plan.sample_s] or rss
    verdict = report.judge(plan, limits, records, rss)
    run_failed = code not in (0, 1) or not records
    gate = {0: "SLO met", 1: "SLO missed"}.get(code, f"run failed (exit {code})")
    head = (f"Medserve soak: profile {profile}, {plan.duration_s:g} s against {server.url}; "
            f"RSS every {plan.sample_s:g} s, warm-up {plan.warmup_s:g} s, windows "
            f"{plan.window_s:g} s\nSLO gate (informational): {gate}\n")
    body = report.table(plan, records, rss, os.cpu_count() or 1)
    passed = verdict.passed and not run_failed
    lines = verdict.lines
    if any(not r.ok for r in records):  # the server's side of the failures
        trouble = served_trouble(server, logs_before)
        lines = [*lines, f"Serve logged {len(trouble)} warnings, errors or non-2xx answers"
                 " during the run" + (":" if trouble else "."), *trouble[:SHOWN_LOG_LINES]]
    text = (head + "\n" + body + "\n" + "\n".join(lines)
            + f"\nVERDICT: {'PASS' if passed else 'FAIL'}\n")
    (out / "soak_report.txt").write_text(text)
    report.write_csv(out / "soak_rss.csv", rss)
    report.plot(out / "soak.png", plan, limits, records, rss)
    return SoakResult(passed, run_failed, code, text, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", default="30m", help="30m (the soak), or e.g. 2m")
    parser.add_argument("--out", type=Path, default=Path("soak-results"))
    parser.add_argument("--profile", default="soak")
    parser.add_argument("--repo", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--config", type=Path, default=ROOT / "medserve.yaml")
    args = parser.parse_args(argv)
    plan = report.SoakPlan.scaled(parse_duration(args.duration))
    args.out.mkdir(parents=True, exist_ok=True)
    with running_server("--repo", str(args.repo), "--config", str(args.config),
                        log=args.out / "server.log", cwd=ROOT) as server:
        result = run_soak(server, args.out, plan, report.SoakLimits(), args.profile,
                          args.repo)
    print(result.text, end="")
    print(f"reports in {result.out}: soak_report.txt, soak_rss.csv, soak.png, loadtest/")
    return 2 if result.run_failed else 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
