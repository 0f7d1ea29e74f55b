"""`medserve tenants add|list`: manage the tenants file (serving/gateway/tenants.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from serving.cli.support import RepoOpt, fail
from serving.errors import ModelLoadError
from serving.gateway.tenants import (
    ALL_MODELS,
    Tenant,
    TenantsFile,
    key_sha256,
    load_tenants,
    new_key,
    save_tenants,
)
from serving.repository.store import DEFAULT_REPO, load_repository

tenants_app = typer.Typer(help="Tenants and their API keys (`medserve serve --tenants FILE`).")
console = Console()

FileOpt = Annotated[Path, typer.Option("--file", help="Tenants file (YAML).")]



def _known_models(repo: Path) -> set[str]:
    repository = load_repository(repo)
    names = {*repository.models, *repository.llms}
    names |= {f"{m.name}:{a.name}" for m in repository.llms.values() for a in m.adapters}
    return names


@tenants_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Tenant name (lowercase letters, digits, '-').")],
    file: FileOpt,
    models: Annotated[
        str, typer.Option(help="Comma-separated models it may call, `<llm>:<adapter>`, or '*'.")
    ],
    rate: Annotated[
        float | None, typer.Option(help="Requests per second, cluster-wide (default: no limit).")
    ] = None,
    burst: Annotated[
        int | None, typer.Option(help="Requests at once after idling (default: one second's).")
    ] = None,
    max_priority: Annotated[
        str, typer.Option(help="Highest X-Priority honoured: stat, urgent or routine.")
    ] = "stat",
    admin: Annotated[
        bool, typer.Option(help="May load and unload LLM adapters at run time.")
    ] = False,
    repo: RepoOpt = DEFAULT_REPO,
) -> None:
    """Add a tenant and print its new API key, once, alone on the last line."""
    allow = [m.strip() for m in models.split(",") if m.strip()]
    if max_priority not in ("stat", "urgent", "routine"):
        raise fail("--max-priority must be stat, urgent or routine")
    priority: Literal["stat", "urgent", "routine"] = max_priority  # type: ignore[assignment]
    try:
        current = load_tenants(file) if file.exists() else TenantsFile()
        unknown = sorted(set(allow) - _known_models(repo) - {ALL_MODELS})
    except ModelLoadError as exc:
        raise fail(exc.message) from None
    if any(t.name == name for t in current.tenants):
        raise fail(f"tenant {name!r} already exists in {file}")
    if unknown:
        raise fail(f"not in the model repository: {', '.join(unknown)}")
    key = new_key()
    try:
        tenant = Tenant(name=name, key_sha256=key_sha256(key), models=allow, rate_per_s=rate,
                        burst=burst, max_priority=priority, admin=admin)
    except ValidationError as exc:
        raise fail("; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )) from None
    save_tenants(file, TenantsFile(tenants=[*current.tenants, tenant]))
    console.print(f"added tenant {name} to {file} (only the key's SHA-256 is stored)")
    console.print("API key, shown once: keep it in your secret store")
    print(key, flush=True)  # plain print, alone on the last line: `| tail -n1` gets the key


@tenants_app.command("list")
def list_tenants(file: FileOpt) -> None:
    """Tenants, their models and rate limits (never key hashes)."""
    try:
        tenants = load_tenants(file).tenants
    except ModelLoadError as exc:
        raise fail(exc.message) from None
    table = Table(title=f"Tenants in {file}")
    for col in ("tenant", "models", "rate/s", "burst", "max priority", "admin"):
        table.add_column(col)
    for t in tenants:
        table.add_row(
            t.name, ",".join(t.models),
            "unlimited" if t.rate_per_s is None else f"{t.rate_per_s:g}",
            "-" if t.rate_per_s is None else f"{t.bucket_size:g}", t.max_priority,
            "yes" if t.admin else "",
        )
    console.print(table)
