"""`medserve serve`: the repository on an embedded Ray instance, until interrupted; SIGHUP
re-deploys it (`medserve rollout`)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from serving.cli.support import ConfigOpt, RepoOpt, console, fail
from serving.errors import ModelLoadError
from serving.gateway.tenants import TENANTS_ENV, load_tenants
from serving.http.header_limits import PROXY_CALLBACK, PROXY_CALLBACK_ENV
from serving.repository.store import (
    DEFAULT_CLUSTER_CONFIG,
    DEFAULT_REPO,
    load_cluster_config,
    load_repository,
)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    # Serve's proxy bounds request headers before anything else (431); it inherits this.
    os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
    import ray
    from ray import serve

    from serving.app import AppArgs, redeploy, run
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
                "request_timeout_s": cluster.proxy_timeout_s,
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
                console.print(redeploy(app_args), highlight=False)
                sys.stdout.flush()
    finally:
        serve.shutdown()
        ray.shutdown()
        services.close()
