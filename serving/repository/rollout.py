"""A model's canary split, written into its manifest (`medserve rollout`); the running server
applies it on SIGHUP (`serving.app.redeploy`; a split-only change is an in-place gateway
reconfigure, see serving/gateway/traffic.py).

The manifest is edited as text, one `traffic:` line, so its comments survive; the result is
validated with the manifest schema before it replaces the file, atomically.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from serving.errors import ModelLoadError
from serving.repository.store import MANIFEST
from serving.schema.imaging import ModelManifest

_TRAFFIC = re.compile(r"^traffic:.*(?:\n[ \t]+.*)*\n?", re.MULTILINE)
_AFTER = re.compile(r"^(?:default_version|versions):.*(?:\n[ \t-]+.*)*\n?", re.MULTILINE)


def parse_weights(text: str) -> dict[str, int]:
    """`1=90,2=10` -> {"1": 90, "2": 10}."""
    weights: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        label, sep, weight = part.partition("=")
        if not sep or not label.strip() or not weight.strip().isdigit():
            raise ModelLoadError(f"--weights takes VERSION=WEIGHT[,...]; got {part!r}")
        weights[label.strip()] = int(weight)
    if not weights:
        raise ModelLoadError("--weights names no version")
    return weights


def traffic_line(weights: dict[str, int]) -> str:
    return "traffic: {" + ", ".join(f'"{v}": {w}' for v, w in weights.items()) + "}\n"


def set_traffic(repo: Path, model: str, weights: dict[str, int]) -> Path:
    """Write `weights` as the model's traffic split; raise ModelLoadError if it is invalid."""
    path = Path(repo) / model / MANIFEST
    if not path.is_file():
        raise ModelLoadError(f"no manifest for model {model!r} in {repo}")
    text = path.read_text()
    line = traffic_line(weights)
    if _TRAFFIC.search(text):
        new = _TRAFFIC.sub(lambda _: line, text, count=1)
    else:  # after the versions (or default_version) block, where a reader looks for it
        spots = list(_AFTER.finditer(text))
        end = spots[-1].end() if spots else len(text)
        head = text[:end] if text[:end].endswith("\n") or not end else text[:end] + "\n"
        new = head + line + text[end:]
    _validate(new, path, model)
    tmp = path.with_name(f".{MANIFEST}.rollout")
    tmp.write_text(new)
    os.replace(tmp, path)
    return path


def _validate(text: str, path: Path, model: str) -> None:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ModelLoadError(f"{path}: not YAML after the edit") from None
    if not isinstance(raw, dict) or raw.get("kind", "imaging") != "imaging":
        raise ModelLoadError(f"{model}: traffic splits apply to imaging models")
    try:
        ModelManifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ModelLoadError(f"{path}: {first['msg']}") from None
