"""The one YAML writer of generated files (Prometheus rules, k8s overlays): block style,
multi-line strings (PromQL, serveConfigV2, dashboards) as literal blocks and no anchors, so
every generated file diffs cleanly in review."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml


class Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # kubectl reads anchors, but reviewers and other tools should not have to


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


Dumper.add_representer(str, _str)


def dump_all(docs: Iterable[Any], width: int = 100) -> str:
    """Documents in order, keys in insertion order."""
    return yaml.dump_all(docs, Dumper=Dumper, sort_keys=False, width=width)
