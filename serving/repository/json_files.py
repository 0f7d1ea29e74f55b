"""Reading the JSON files a model format describes itself with (bundle metadata, checkpoint
and adapter configs), with errors that name the file and say what it should have been."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from serving.errors import ModelLoadError


def read_json(path: Path, part_of: str) -> dict[str, Any]:
    """The JSON object in `path`, which belongs to `part_of` (e.g. "a MONAI bundle")."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: missing (not a complete {part_of})") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ModelLoadError(f"{path}: must hold a JSON object")
    return doc
