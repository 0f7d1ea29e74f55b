"""Audit log: one JSON line per request: who called which model and version, how it ended.

A line holds only values Medserve itself chose: the tenant's configured name, repository
model and version labels (`unknown` for names outside the repository), the route template
(never the raw path), status, latency and Serve's request id. Bodies, headers, query
strings, filenames and anything derived from them never reach it, so no patient data can.
Health probes are left out: they are not access to a model and would drown the trail.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
from datetime import UTC, datetime
from pathlib import Path

from serving.observability.metrics import NONE
from serving.schema.cluster import AuditConfig

LOGGER = "medserve.audit"
FILE_NAME = "medserve_audit.jsonl"
UNAUDITED_ROUTES = frozenset({"/v2/health/live", "/v2/health/ready"})


def default_path() -> Path:
    """Beside Serve's own access and replica logs, where an SRE's log shipper already looks."""
    try:
        from ray.serve._private.logging_utils import get_serve_logs_dir

        return Path(get_serve_logs_dir()) / FILE_NAME
    except ImportError:  # pragma: no cover - Serve moved its helper
        return Path("logs") / FILE_NAME


class AuditLog:
    """Appends to a file through the `medserve.audit` logger. Several gateway replicas on one
    node may share the file: each line is one O_APPEND write, and WatchedFileHandler reopens
    it after an external logrotate."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.logger = logging.getLogger(LOGGER)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False  # never into Ray's replica logs or the driver
        if not any(getattr(h, "baseFilename", None) == str(path.resolve())
                   for h in self.logger.handlers):
            handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(message)s"))
            self.logger.addHandler(handler)

    @classmethod
    def from_config(cls, config: AuditConfig) -> AuditLog | None:
        if not config.enabled:
            return None
        return cls(Path(config.path) if config.path else default_path())

    def record(
        self, *, tenant: str | None, model: str, version: str, route: str, method: str,
        status: int, latency_s: float, request_id: str | None,
    ) -> None:
        if route in UNAUDITED_ROUTES:
            return
        line = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "tenant": tenant,
            "model": None if model == NONE else model,
            "version": None if version == NONE else version,
            "route": route,
            "method": method,
            "status": status,
            "latency_ms": round(latency_s * 1e3, 3),
            "request_id": request_id,
        }
        self.logger.info(json.dumps(line, separators=(",", ":")))
