"""`medserve rollout`: set a model's canary split in its manifest; apply it to a running server."""

from __future__ import annotations

import os
import signal
from typing import Annotated

import typer

from serving.cli.support import RepoOpt, console, fail
from serving.errors import ModelLoadError
from serving.repository.rollout import parse_weights, set_traffic
from serving.repository.store import DEFAULT_REPO


def signal_reload(pid: int) -> None:
    """Ask a running `medserve serve` to re-deploy the repository."""
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ModelLoadError(f"no process {pid}: is `medserve serve` running?") from None


def rollout(
    model: Annotated[str, typer.Argument(help="Imaging model whose traffic split to set.")],
    weights: Annotated[
        str, typer.Option(help="Split of unpinned requests: VERSION=WEIGHT[,...], e.g. 1=90,2=10.")
    ],
    repo: RepoOpt = DEFAULT_REPO,
    pid: Annotated[
        int | None,
        typer.Option(help="Process id of the running `medserve serve`: apply now (SIGHUP)."),
    ] = None,
) -> None:
    """Set a model's canary split (or roll back: `--weights 1=100`) in its manifest."""
    try:
        path = set_traffic(repo, model, parse_weights(weights))
        if pid is not None:
            signal_reload(pid)
    except ModelLoadError as exc:
        raise fail(exc.message) from None
    console.print(f"wrote {path}" + (f"; asked medserve (pid {pid}) to apply it" if pid else ""))
