"""A command's error is one line however long it is: the path it names stays whole to copy or
grep (rich would otherwise break it at the console's width)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from serving.cli.main import app


def test_a_refusal_naming_a_long_path_prints_it_on_one_line(tmp_path: Path) -> None:
    folder = tmp_path.joinpath(*["a-deeply-nested-vendor-delivery-folder"] * 4)
    folder.mkdir(parents=True)
    model = folder / "model.onnx"
    model.write_bytes(b"not an onnx graph")
    result = CliRunner().invoke(app, ["models", "import", str(model), "--name", "vendor",
                                      "--repo", str(tmp_path / "repo"),
                                      "--intended-use", "Triage support; the clinician decides."],
                                terminal_width=80)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) > 80
    assert lines[0].startswith("error: ") and str(model) in lines[0]
