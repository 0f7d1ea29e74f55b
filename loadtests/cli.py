"""`medserve loadtest` and `medserve capacity`: registered on the medserve app by serving.cli
(entry-point group `medserve.commands`), and the same two commands as `medserve-loadtest`.

They need the load-test extra (`pip install medserve[loadtest]`): `loadtest` runs Locust and
both draw with matplotlib; without them a command stops (exit 2) with one line saying so.
Heavy imports (Locust runs in a subprocess anyway, matplotlib, the profiler) stay inside the
commands, so this module imports without the extra and `medserve --help` and the serving
processes pay nothing for them.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from serving.cli.support import RepoOpt, fail
from serving.errors import ModelLoadError
from serving.repository.store import DEFAULT_REPO

# Wide when piped (CI logs, files): the capacity and SLO tables must not wrap.
console = Console(width=None if sys.stdout.isatty() else 160)
EXTRA = "medserve[loadtest]"  # the optional extra that holds Locust and matplotlib


def _fail(message: str) -> typer.Exit:
    return fail(message, code=2)  # 1 is the gate's verdict: the SLO was missed


def _require(*modules: str) -> None:
    """Stop (exit 2) unless `modules` of the load-test extra are importable; imports nothing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise _fail(escape(f"{' and '.join(missing)} not installed: pip install '{EXTRA}'"))


def loadtest(
    profile: Annotated[str, typer.Option(help="Profile name in loadtests/profiles or a path.")],
    host: Annotated[str, typer.Option(help="Medserve base URL, e.g. http://127.0.0.1:8000.")],
    duration: Annotated[
        str | None, typer.Option(help="Override the schedule length: 90s, 5m, 1h.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for CSV, HTML and SLO reports.")] = Path(
        "loadtest-results"
    ),
    repo: RepoOpt = DEFAULT_REPO,
) -> None:
    """Run a load profile open-loop (headless Locust); exit 1 when any model misses its SLO
    objective or its error budget, 2 when the run itself failed."""
    _require("locust", "matplotlib")  # the Locust subprocess, the plot
    from loadtests.run.gate import parse_duration, run_gate

    try:
        seconds = parse_duration(duration) if duration else None
        result = run_gate(profile, host, out, repo, seconds)
    except ModelLoadError as exc:
        raise _fail(exc.message) from None
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    print(result.text, end="")  # plain: the table must not be re-wrapped to the terminal
    console.print(f"reports in {result.out}: slo_report.txt, slo_report.csv, slo_latency.png, "
                  "locust.html, locust_stats.csv")
    if not result.passed:
        raise typer.Exit(code=2 if result.run_failed else 1)


def capacity(
    rollout: Annotated[Path, typer.Option(help="Rollout description (loadtests/rollouts/).")],
    host: Annotated[
        str | None, typer.Option(help="Profile this Medserve (one replica per model) instead "
                                      "of starting one.")
    ] = None,
    profile_in: Annotated[
        Path | None, typer.Option(help="Reuse a saved profile.json instead of measuring.")
    ] = None,
    seconds: Annotated[float, typer.Option(help="Seconds per concurrency level.")] = 8.0,
    out: Annotated[Path, typer.Option(help="Folder for profile, plan plot, overlay.")] = Path(
        "capacity-results"
    ),
    repo: RepoOpt = DEFAULT_REPO,
) -> None:
    """Profile each model on this machine, then size replicas, GPUs and cost for the
    rollout's peak and write the recommended autoscaling bounds as a config overlay."""
    _require("matplotlib")  # the plot (the profiler is plain httpx)
    import platform

    from loadtests.capacity import profiler
    from loadtests.capacity import report as capacity_report
    from loadtests.capacity.planner import make_plan
    from loadtests.traffic.profiles import all_manifests
    from loadtests.traffic.rollout import load_rollout
    from serving.repository.store import load_repository

    try:
        plan_for = load_rollout(rollout)
        repository = load_repository(repo)
    except ModelLoadError as exc:
        raise _fail(exc.message) from None
    except (OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    manifests = all_manifests(repository)
    models = [m for m in plan_for.models if m in manifests]
    machine = f"{platform.node()} ({os.cpu_count()} CPUs)"
    if profile_in is not None:
        profiles, machine = profiler.load(profile_in)
    else:
        profiles = profiler.profile_models(models, repository, host, seconds, console.print)
        profiler.save(out / "profile.json", profiles, machine)
    plan = make_plan(plan_for, profiles, manifests)
    console.print(capacity_report.table(plan, machine))
    for line in capacity_report.basis_lines(plan, profiles):
        console.print(f"  {line}", highlight=False)
    for m in sorted(set(plan_for.models) - set(models)):
        console.print(f"  {m}: in the rollout but not in the repository: not planned")
    capacity_report.plot(out / "capacity.png", plan, profiles)
    capacity_report.write_overlay(out / "scaling-overlay.yaml", plan,
                                  f"medserve capacity --rollout {rollout}")
    saved = "" if profile_in else "profile.json, "
    console.print(f"wrote {saved}capacity.png, scaling-overlay.yaml to {out}")


# `medserve-loadtest`: the same commands without the rest of `medserve`.
app = typer.Typer(
    help="Medserve load tests and capacity planning (the loadtest extra of medserve).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.command("loadtest")(loadtest)
app.command("capacity")(capacity)
