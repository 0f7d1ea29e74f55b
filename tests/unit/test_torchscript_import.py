"""`medserve models import` of a TorchScript file (made with torch.jit.script): the input shape
comes from `--input-shape`, the output's from running the network once, and the imported model
loads as the whole network and computes what the original does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from serving.cli.main import app
from serving.errors import ModelLoadError
from serving.repository.importer import ImportOptions, import_model, parse_shape
from serving.repository.networks import load_network
from serving.repository.store import load_repository

INTENDED = "Triage support for clinicians reading radiographs; the clinician decides."


class TinyClassifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(self.conv(x), 1).flatten(1)
        return torch.sigmoid(self.head(pooled))


@pytest.fixture
def scripted(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "vendor.ts"
    torch.jit.script(TinyClassifier().eval()).save(str(path))
    return path


def test_import_names_the_shapes_and_serves_the_same_network(tmp_path: Path,
                                                              scripted: Path) -> None:
    repo = tmp_path / "repo"
    args = ["models", "import", str(scripted), "--name", "vendor-ts", "--repo", str(repo),
            "--labels", "effusion,nodule,pneumothorax", "--intended-use", INTENDED]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and "--input-shape" in refused.output
    assert not (repo / "vendor-ts").exists()

    done = CliRunner().invoke(app, [*args, "--input-shape", "1,64,64"])
    assert done.exit_code == 0, done.output
    loaded = load_repository(repo)
    manifest = loaded.manifest("vendor-ts")
    assert manifest.architecture is None and manifest.task == "classification"
    assert manifest.inputs[0].shape == [-1, 1, 64, 64]
    assert manifest.outputs[0].shape == [-1, 3]
    assert manifest.preprocessing.spatial_size == (64, 64)
    (v1,) = manifest.versions
    assert v1.weights.format == "torchscript"

    net = load_network(None, v1.weights, loaded.verify("vendor-ts", v1), "cpu")
    x = torch.rand(2, 1, 64, 64)
    reference = torch.jit.load(str(scripted))
    with torch.inference_mode():
        torch.testing.assert_close(net(x), reference(x))

    again = CliRunner().invoke(app, ["models", "import", str(scripted), "--name", "vendor-ts",
                                     "--repo", str(repo)])  # a new version needs no shape
    assert again.exit_code == 0, again.output
    assert [v.version for v in load_repository(repo).manifest("vendor-ts").versions] == [
        "1", "2"]


def test_a_shape_the_network_cannot_take_is_refused_with_the_file_named(
    tmp_path: Path, scripted: Path
) -> None:
    options = ImportOptions(name="bad", intended_use=INTENDED, labels=["a", "b", "c"],
                            input_shape=[3, 64, 64])  # the network takes one channel
    with pytest.raises(ModelLoadError, match=r"vendor\.ts: cannot run it as TorchScript"):
        import_model(tmp_path / "repo", scripted, options)
    with pytest.raises(ModelLoadError, match="positive integers"):
        parse_shape("1,x,64")
    corrupt = tmp_path / "corrupt.ts"
    corrupt.write_bytes(b"PK\x03\x04 not a TorchScript archive")
    with pytest.raises(ModelLoadError, match=r"corrupt\.ts: cannot run it"):
        import_model(tmp_path / "repo", corrupt, options)
