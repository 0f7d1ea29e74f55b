"""The README's "Importing a model" examples run as written (the `medserve` command in a
shell, as a platform engineer types it), against models made here with their own libraries."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from serving.repository.store import load_repository
from tests.conftest import ROOT
from tests.unit.test_monai_bundle import LABELS, make_bundle


def readme_import_examples() -> list[str]:
    """The bash blocks of the README's "Importing a model" section, in order."""
    section = (ROOT / "README.md").read_text().split("### Importing a model")[1]
    return re.findall(r"```bash\n(.*?)```", section.split("\n### ")[0], re.S)


def run_readme_block(code: str, cwd: Path, repo: Path) -> None:
    env = dict(os.environ, MEDSERVE_MODEL_REPO=str(repo),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_readme_import_example_runs_as_written(tmp_path: Path) -> None:
    code = readme_import_examples()[0]
    for name, seed in (("vendor-cxr.onnx", 0), ("vendor-cxr-v2.onnx", 1)):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.AdaptiveAvgPool2d(1),
                                  torch.nn.Flatten(), torch.nn.Sigmoid()).eval()
        torch.onnx.export(net, (torch.zeros(1, 1, 64, 64),), str(tmp_path / name), dynamo=False,
                          input_names=["image"], output_names=["probabilities"],
                          dynamic_axes={"image": {0: "n"}, "probabilities": {0: "n"}})
    run_readme_block(code, tmp_path, tmp_path / "repo")
    manifest = load_repository(tmp_path / "repo").manifest("vendor-cxr")
    assert [v.version for v in manifest.versions] == ["1", "2"]
    assert manifest.labels == ["Atelectasis", "Cardiomegaly", "Effusion"]
    assert manifest.preprocessing.spatial_size == (64, 64)


def test_the_readme_bundle_import_example_runs_as_written(tmp_path: Path) -> None:
    code = readme_import_examples()[1]
    (tmp_path / "path" / "to").mkdir(parents=True)
    make_bundle(tmp_path / "path" / "to" / "bundle")
    run_readme_block(code, tmp_path, tmp_path / "repo")
    assert load_repository(tmp_path / "repo").manifest("cxr-view").labels == LABELS


def test_the_readme_torchscript_example_runs_as_written(tmp_path: Path) -> None:
    (code,) = [c for c in readme_import_examples() if "vendor-ts.ts" in c]
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Sigmoid()).eval()
    torch.jit.trace(net, torch.zeros(1, 1, 64, 64)).save(str(tmp_path / "vendor-ts.ts"))
    run_readme_block(code, tmp_path, tmp_path / "repo")
    manifest = load_repository(tmp_path / "repo").manifest("vendor-ts")
    assert manifest.labels == ["Effusion", "Nodule"] and manifest.outputs[0].shape == [-1, 2]
