"""`medserve` command line: serve, inspect the repository, build weights and configs."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
import yaml
from rich.console import Console
from rich.table import Table

from serving.cli_support import RepoOpt, fail
from serving.errors import ModelLoadError
from serving.repository import (
    DEFAULT_CLUSTER_CONFIG,
    DEFAULT_REPO,
    load_cluster_config,
    load_repository,
)
from serving.tenants import TENANTS_ENV, load_tenants
from serving.tenants_cli import tenants_app

app = typer.Typer(
    help="Medserve: inference serving for medical AI models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold request data
)
models_app = typer.Typer(help="Inspect and check the model repository.")
app.add_typer(models_app, name="models")
app.add_typer(tenants_app, name="tenants")
console = Console()

ConfigOpt = Annotated[Path, typer.Option("--config", help="Cluster config file.")]



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
            manifest.name, version.version, manifest.task, manifest.backend,
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


@app.command("rollout")
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
    from serving.rollout import parse_weights, set_traffic, signal_reload

    try:
        path = set_traffic(repo, model, parse_weights(weights))
        if pid is not None:
            signal_reload(pid)
    except ModelLoadError as exc:
        raise fail(exc.message) from None
    console.print(f"wrote {path}" + (f"; asked medserve (pid {pid}) to apply it" if pid else ""))


@app.command("build-weights")
def build_weights(
    repo: RepoOpt = DEFAULT_REPO,
    force: Annotated[bool, typer.Option(help="Rebuild even if the checksum matches.")] = False,
) -> None:
    """Build demo weights from each manifest's seed and check them against its sha256."""
    from serving.networks import save_demo_weights

    try:
        repository = load_repository(repo)
        for manifest, version in repository.iter_versions():
            path = repository.weights_path(manifest.name, version)
            if version.weights.demo_seed is None:
                continue  # real weights are delivered, not built
            if not force and repository.checksum_status(manifest.name, version) == "ok":
                continue
            save_demo_weights(manifest.architecture, version.weights, path)
            repository.verify(manifest.name, version)
            console.print(f"built {path}")
        if repository.llms:
            from serving.llm.build import build_llm

            for name in repository.llms:
                for path in build_llm(repository, name, force):
                    console.print(f"built {path}")
    except ModelLoadError as exc:
        raise fail(exc.message) from None


@app.command("build-config")
def build_config(
    out: Annotated[Path, typer.Option(help="Where to write the Serve config YAML.")] = Path(
        "serve_config.yaml"
    ),
    target: Annotated[str, typer.Option(help="local or k8s.")] = "local",
    overlay: Annotated[
        str | None,
        typer.Option(help="With --target k8s: apply this overlay's `backends` (and the Triton "
                     "sidecar address) from the cluster config's `kubernetes.overlays`."),
    ] = None,
    repo: RepoOpt = DEFAULT_REPO,
    config: ConfigOpt = DEFAULT_CLUSTER_CONFIG,
) -> None:
    """Write a `serve deploy`-ready config generated from the repository."""
    from serving.app import serve_config

    if target not in ("local", "k8s"):
        raise fail("--target must be local or k8s")
    if overlay is not None and target != "k8s":
        raise fail("--overlay goes with --target k8s")
    kind: Literal["local", "k8s"] = "k8s" if target == "k8s" else "local"
    config_path = str(config) if config.exists() else None
    try:
        choices: dict[str, Any] = {}
        if overlay is not None:
            from serving.k8s.rayservice import triton_plan

            overlays = load_cluster_config(config).kubernetes.overlays
            if overlay not in overlays:
                raise fail(f"no overlay {overlay!r} in {config}; have {', '.join(overlays)}")
            plan = triton_plan(repo, overlays[overlay])
            choices = {"triton_url": plan.url, "backends": plan.backends}
        doc = serve_config(str(repo), config_path, kind, **choices)
    except ModelLoadError as exc:
        raise fail(exc.message) from None
    header = "# Generated by `medserve build-config` from model_repo: do not edit by hand.\n"
    out.write_text(header + yaml.safe_dump(doc, sort_keys=False))
    console.print(f"wrote {out}")


@app.command("build-triton")
def build_triton(
    out: Annotated[Path, typer.Option(help="Triton model repository to write.")] = Path(
        "triton_repo"
    ),
    fmt: Annotated[
        str, typer.Option("--format", help="python (CPU Triton) or onnx (GPU Triton).")
    ] = "python",
    model: Annotated[
        list[str] | None,
        typer.Option(help="Model to build (repeatable; default: every triton-backend model)."),
    ] = None,
    repo: RepoOpt = DEFAULT_REPO,
) -> None:
    """Write a Triton model repository: config.pbtxt and model files per model."""
    from serving.triton.build import build_repository

    if fmt not in ("python", "onnx"):
        raise fail("--format must be python or onnx")
    try:
        built = build_repository(
            load_repository(repo), out, "onnx" if fmt == "onnx" else "python", model
        )
    except ModelLoadError as exc:
        raise fail(exc.message) from None
    for path in built:
        console.print(f"built {path}")


@app.command("build-observability")
def build_observability(
    out: Annotated[Path, typer.Option(help="Folder for prometheus/ and grafana/.")] = Path(
        "observability"
    ),
    repo: RepoOpt = DEFAULT_REPO,
    runbook_url: Annotated[
        str, typer.Option(help="Runbook page the alerts link to (anchor per alert).")
    ] = "README.md",
) -> None:
    """Write the SLO recording rules, burn-rate alerts and Grafana dashboard from the manifests."""
    from serving.dashboard import dashboard_json
    from serving.slo import rules_yaml

    try:
        repository = load_repository(repo)
        manifests = [*repository.models.values(), *repository.llms.values()]
    except ModelLoadError as exc:
        raise fail(exc.message) from None
    files = {
        out / "prometheus" / "medserve-rules.yaml": rules_yaml(manifests, runbook_url),
        out / "grafana" / "medserve-dashboard.json": dashboard_json(),
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        console.print(f"wrote {path}")


@app.command("build-k8s")
def build_k8s(
    out: Annotated[Path, typer.Option(help="The kustomize tree (overlays/*/generated/).")] = Path(
        "k8s"
    ),
    check: Annotated[
        bool, typer.Option(help="Write nothing; exit 1 if the committed files are stale.")
    ] = False,
    repo: RepoOpt = DEFAULT_REPO,
    config: ConfigOpt = DEFAULT_CLUSTER_CONFIG,
) -> None:
    """Regenerate each overlay's RayService (serveConfigV2, worker groups), Ingress and
    observability objects from the repository and the cluster config's `kubernetes:`."""
    from serving.k8s.render import drift, render, write

    try:
        files = render(repo, config)
    except ModelLoadError as exc:
        raise fail(exc.message) from None
    if check:
        stale = drift(out, files)
        if stale:
            raise fail("stale, run `medserve build-k8s`: " + ", ".join(stale))
        console.print(f"ok: {len(files)} generated files match")
        return
    for path in write(out, files):
        console.print(f"wrote {path}")


@app.command("samples")
def samples(out: Annotated[Path, typer.Argument(help="Folder to write into.")]) -> None:
    """Write synthetic sample studies (no real patient data) for trying the endpoints."""
    from serving.samples import make_ct_series, make_png, make_radiograph, zip_series

    out.mkdir(parents=True, exist_ok=True)
    (out / "cxr.dcm").write_bytes(make_radiograph())
    (out / "cxr.png").write_bytes(make_png())
    (out / "ct-series.zip").write_bytes(zip_series(make_ct_series()))
    console.print(f"wrote cxr.dcm, cxr.png, ct-series.zip to {out}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command("serve")
def serve_cmd(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    repo: RepoOpt = DEFAULT_REPO,
    config: ConfigOpt = DEFAULT_CLUSTER_CONFIG,
    metrics_port: Annotated[
        int | None, typer.Option(help="Ray metrics export port (Prometheus text).")
    ] = None,
    num_cpus: Annotated[
        int | None, typer.Option(help="Logical CPU slots for the embedded Ray.")
    ] = None,
    triton_url: Annotated[
        str | None,
        typer.Option(help="Triton gRPC host:port for triton-backend models (default: start one)."),
    ] = None,
    tenants: Annotated[
        Path | None,
        typer.Option(envvar=TENANTS_ENV, help="Tenants file: turns API-key auth on "
                     "(`medserve tenants add`); required to bind a non-loopback address."),
    ] = None,
) -> None:
    """Serve the repository on an embedded Ray instance until interrupted."""
    try:
        cluster = load_cluster_config(config)
        tenants_file = tenants or (
            Path(cluster.auth.tenants_file) if cluster.auth.tenants_file else None
        )
        if not _is_loopback(host) and tenants_file is None:
            raise fail(
                f"refusing to bind {host}: without tenant authentication Medserve only binds "
                "loopback addresses; pass --tenants FILE (see `medserve tenants add`)"
            )
        if tenants_file is not None:
            count = len(load_tenants(tenants_file).tenants)  # a bad file fails here, not later
            # The gateway replicas, Ray processes started below, inherit it (as on Kubernetes).
            os.environ[TENANTS_ENV] = str(tenants_file.resolve())
            console.print(f"auth on: {count} tenants from {tenants_file}")
        repository = load_repository(repo)
        repository.check()
    except ModelLoadError as exc:
        raise fail(exc.message) from None

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray lowers worker priority (nice 15) by default; here the workers are the model replicas
    # and the gateway, the very processes whose latency we serve.
    os.environ.setdefault("RAY_worker_niceness", "0")
    import ray
    from ray import serve

    from serving.app import AppArgs, run
    from serving.triton.embedded import triton_endpoint

    ray.init(
        address="local",
        num_cpus=num_cpus or cluster.ray.num_cpus or os.cpu_count(),
        include_dashboard=False,
        _metrics_export_port=metrics_port or cluster.ray.metrics_export_port,
        logging_level=logging.WARNING,
        # Replica and access logs stay in Ray's session log files; shipping every line to this
        # process costs CPU on the request path.
        log_to_driver=False,
    )
    stop, reload, wake = threading.Event(), threading.Event(), threading.Event()

    def on_signal(event: threading.Event) -> None:
        event.set()
        wake.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: on_signal(stop))
    # SIGHUP re-deploys the repository (`medserve rollout`): a traffic split in place.
    signal.signal(signal.SIGHUP, lambda *_: on_signal(reload))
    services = contextlib.ExitStack()
    try:
        try:
            triton = services.enter_context(triton_endpoint(repository, triton_url))
        except ModelLoadError as exc:
            raise fail(exc.message) from None
        serve.start(
            http_options={
                "host": host,
                "port": port,
                "request_timeout_s": cluster.http.request_timeout_s + 5,
                "keep_alive_timeout_s": cluster.http.keep_alive_timeout_s,
            }
        )
        app_args = AppArgs(
            model_repo=str(repository.root),
            # Absolute: Serve's controller runs the application builder, not this process.
            config=str(config.resolve()) if config.exists() else None,
            device=None,
            triton_url=triton,
        )
        run(app_args, cluster)
        console.print(f"Medserve ready on http://{host}:{port} (docs at /docs)")
        sys.stdout.flush()
        while wake.wait():
            wake.clear()
            if stop.is_set():
                break
            if reload.is_set():
                reload.clear()
                from serving.rollout import redeploy

                console.print(redeploy(app_args), highlight=False)
                sys.stdout.flush()
    finally:
        serve.shutdown()
        ray.shutdown()
        services.close()


# Load tests and capacity planning live in loadtests/ (the layout in DESIGN.md).
from loadtests.cli import capacity, loadtest  # noqa: E402 - registered after the serving commands

app.command("loadtest")(loadtest)
app.command("capacity")(capacity)


if __name__ == "__main__":
    app()
