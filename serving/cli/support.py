"""What the `medserve` command's modules share: the error console, the one way a command
fails, the output console, and the repository and config options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

err = Console(stderr=True)
RepoOpt = Annotated[Path, typer.Option("--repo", help="Model repository folder.")]
ConfigOpt = Annotated[Path, typer.Option("--config", help="Cluster config file.")]
console = Console()


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` on stderr, one unbroken line (a path in it stays whole to copy or
    grep; the terminal wraps it, not rich); raise the returned Exit (`raise fail(...)`)."""
    err.print(f"[red]error:[/red] {message}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(code=code)
