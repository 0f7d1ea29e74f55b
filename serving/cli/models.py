"""`medserve models`: list the model repository, check its manifests and checksums, and
import models into it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from serving.cli.support import RepoOpt, console, fail
from serving.errors import ModelLoadError
from serving.repository.importer import ImportOptions, import_model, parse_shape, split_list
from serving.repository.store import DEFAULT_REPO, load_repository

models_app = typer.Typer(help="Inspect and check the model repository.")


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, repo: RepoOpt = DEFAULT_REPO) -> None:
    """List the repository: name, versions, task, backend and weights checksum status."""
    if ctx.invoked_subcommand:
        return
    try:
        repository = load_repository(repo)
    except ModelLoadError as exc:
        raise fail(exc.message) from None
    table = Table(title=f"Model repository {repository.root}")
    # served: `default` marks the default version, a percent its share of a canary split.
    for col in ("model", "version", "task", "backend", "modalities", "weights", "served"):
        table.add_column(col)
    for manifest, version in repository.iter_versions():
        status = repository.checksum_status(manifest.name, version)
        colour = {"ok": "green", "missing": "yellow", "mismatch": "red"}[status]
        split = manifest.traffic_split
        share = f"{split.get(version.version, 0) / sum(split.values()):.0%}"
        default = version.version == manifest.served_version
        table.add_row(
            manifest.name, version.version, manifest.task, manifest.runtime(version.version),
            ",".join(manifest.modalities), f"[{colour}]{status}[/{colour}]",
            " ".join(["default"] * default + [share] * (manifest.traffic is not None)),
        )
    for llm, label, f in repository.iter_llm_files():
        status = repository.file_status(f)
        colour = {"ok": "green", "missing": "yellow", "mismatch": "red"}[status]
        name, part = f.label.split(" ")[0], f.label.rsplit(" ", 1)[-1]
        table.add_row(
            name, label, f"chat ({part})", llm.engine.kind, "-", f"[{colour}]{status}[/{colour}]",
            "default" if label == llm.served_version and part == "weights" else "",
        )
    console.print(table)


@models_app.command("check")
def models_check(repo: RepoOpt = DEFAULT_REPO) -> None:
    """Validate every manifest and weights checksum; exit non-zero on the first problem."""
    try:
        repository = load_repository(repo)
        repository.check()
    except ModelLoadError as exc:
        raise fail(exc.message) from None
    count = sum(1 for _ in repository.iter_versions())
    count += sum(len(m.versions) for m in repository.llms.values())
    adapters = sum(len(m.adapters) for m in repository.llms.values())
    models = len(repository.models) + len(repository.llms)
    console.print(
        f"ok: {models} models, {count} versions, {adapters} adapters, checksums match"
    )


@models_app.command("import")
def models_import(
    path: Annotated[Path, typer.Argument(
        help="An ONNX, TorchScript (.ts/.pt) or GGUF file, or a MONAI bundle, Hugging Face "
        "or PEFT folder.")],
    name: Annotated[str, typer.Option(
        help="Model name in the repository (and every URL); LLM:ADAPTER for a PEFT adapter.")],
    version: Annotated[
        str | None, typer.Option(help="Version label (default: the next integer).")
    ] = None,
    intended_use: Annotated[
        str | None,
        typer.Option(help="Intended-use statement (required unless the file's metadata has "
                     "one): what the model is for, and for whom."),
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="classification or detection (default: from the file).")
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="Finding labels in output-channel order: A,B,...")
    ] = None,
    modalities: Annotated[
        str | None, typer.Option(help="DICOM modalities accepted, e.g. CR,DX.")
    ] = None,
    description: Annotated[str | None, typer.Option(help="One line for `medserve models`.")] = None,
    input_shape: Annotated[
        str | None, typer.Option(help="TorchScript: the input's shape without the batch axis, "
                                 "C,H,W or C,D,H,W (the file does not say it).")
    ] = None,
    repo: RepoOpt = DEFAULT_REPO,
) -> None:
    """Copy a model into the repository, write or extend its manifest (sha256, tensors and
    metadata from the file), and check it as `medserve models check` does."""
    try:
        options = ImportOptions(name=name, version=version, intended_use=intended_use,
                                task=task, labels=split_list(labels),
                                modalities=split_list(modalities), description=description,
                                input_shape=parse_shape(input_shape))
        manifest = import_model(repo, path, options)
    except ModelLoadError as exc:
        raise fail(exc.message) from None
    console.print(f"imported {path.name} as {name}; wrote {manifest}")
