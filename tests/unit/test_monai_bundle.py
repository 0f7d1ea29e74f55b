"""MONAI bundles made with MONAI's own bundle API around a real MONAI network: imported with
`medserve models import`, served through the torch backend with the bundle's activation, and
refused with a clear message when incomplete or of a kind not served (no Ray)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ckpt_export, init_bundle
from monai.networks.nets import DenseNet
from typer.testing import CliRunner

from serving.backends.torch_backend import TorchBackend
from serving.cli.main import app
from serving.errors import ModelLoadError
from serving.repository.importer import ImportOptions, import_model
from serving.repository.store import load_repository

INTENDED = "Decision support: sorts chest radiographs by view for reading lists; a human checks."
LABELS = ["frontal", "lateral", "other"]
NETWORK_DEF = {"_target_": "DenseNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 3,
               "init_features": 8, "growth_rate": 8, "block_config": [2, 2]}


def metadata(output_format: str = "classes", intended_use: str | None = INTENDED) -> dict:
    doc = {
        "version": "0.2.0", "task": "Chest radiograph view classification",
        "description": "Which view a chest radiograph shows.",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "DX",
                                 "num_channels": 1, "spatial_shape": [64, 64],
                                 "dtype": "float32", "value_range": [0, 1],
                                 "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "probabilities", "format": output_format,
                                 "num_channels": 3, "spatial_shape": [1, 3],
                                 "dtype": "float32", "channel_def": dict(enumerate(LABELS))}},
        },
    }
    if intended_use:
        doc["intended_use"] = intended_use
    return doc


INFERENCE = {
    "imports": ["$import glob"],
    "bundle_root": ".",
    "device": "$torch.device('cpu')",
    "network_def": NETWORK_DEF,
    "network": "$@network_def.to(@device)",
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]},
}


def network(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return DenseNet(**{k: v for k, v in NETWORK_DEF.items() if k != "_target_"}).eval()


def make_bundle(root: Path, torchscript: bool = False, **meta: object) -> Path:
    init_bundle(root, network=network(), metadata_str=metadata(**meta), inference_str=INFERENCE)
    if torchscript:  # the zoo's exported form, made by MONAI's own exporter
        ckpt_export(net_id="network_def", filepath=str(root / "models" / "model.ts"),
                    ckpt_file=str(root / "models" / "model.pt"),
                    meta_file=str(root / "configs" / "metadata.json"),
                    config_file=str(root / "configs" / "inference.json"))
        (root / "models" / "model.pt").unlink()
    return root


def images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.random((n, 1, 64, 64), dtype=np.float32) for n in (2, 1)]


@pytest.mark.parametrize("torchscript", [False, True], ids=["network_def", "torchscript"])
def test_an_imported_bundle_answers_as_its_network_and_activation(
    tmp_path: Path, torchscript: bool
) -> None:
    bundle = make_bundle(tmp_path / "view_classifier", torchscript=torchscript)
    repo = tmp_path / "repo"
    done = CliRunner().invoke(app, ["models", "import", str(bundle), "--name", "cxr-view",
                                    "--repo", str(repo)])
    assert done.exit_code == 0, done.output
    loaded = load_repository(repo)
    manifest = loaded.manifest("cxr-view")
    (version,) = manifest.versions
    assert version.version == "0.2.0"  # the bundle's own version
    assert version.weights.format == "monai_bundle"
    assert version.weights.file == ("models/model.ts" if torchscript else "models/model.pt")
    assert manifest.labels == LABELS and manifest.intended_use == INTENDED
    assert manifest.modalities == ["DX"] and manifest.task == "classification"
    assert manifest.inputs[0].shape == [-1, 1, 64, 64]
    assert manifest.preprocessing.spatial_size == (64, 64)
    assert (manifest.preprocessing.mean, manifest.preprocessing.std) == (0.0, 1.0)
    assert (repo / "cxr-view" / "0.2.0" / "configs" / "inference.json").is_file()

    backend = TorchBackend(manifest, version, loaded.verify("cxr-view", version), "cpu")
    got = asyncio.run(backend.run(images()))
    with torch.no_grad():
        want = [torch.softmax(network()(torch.from_numpy(x)), 1).numpy() for x in images()]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)
        np.testing.assert_allclose(g.sum(axis=1), 1.0, atol=1e-5)


def test_incomplete_or_unserved_bundles_are_refused_at_import(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    options = ImportOptions(name="view")
    broken = make_bundle(tmp_path / "broken")
    (broken / "configs" / "metadata.json").write_text("{ not json")
    with pytest.raises(ModelLoadError, match=r"metadata\.json: not valid JSON"):
        import_model(repo, broken, options)

    no_use = make_bundle(tmp_path / "no_use", intended_use=None)
    with pytest.raises(ModelLoadError, match="no intended-use statement"):
        import_model(repo, no_use, options)

    hounsfield = make_bundle(tmp_path / "hu", output_format="hounsfield")
    with pytest.raises(ModelLoadError, match="output format 'hounsfield' names no task"):
        import_model(repo, hounsfield, options)

    mismatched = make_bundle(tmp_path / "mismatched")
    config = json.loads((mismatched / "configs" / "inference.json").read_text())
    config["network_def"]["growth_rate"] = 16  # the weights no longer fit the network
    (mismatched / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"model\.pt: cannot load the bundle's network"):
        import_model(repo, mismatched, options)
    assert not (repo / "view").exists()  # nothing left behind by any of them


# A segmentation bundle whose network is known: a 1x1x1 convolution that labels each voxel
# "dense" where the windowed intensity is over 0.5 (HU above -300: soft tissue, the nodule).
SEG_LABELS = ["background", "dense"]
SEG_NETWORK_DEF = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2,
                   "kernel_size": 1}


def seg_network() -> torch.nn.Module:
    net = torch.nn.Conv3d(1, 2, kernel_size=1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1, 1))
        net.bias.copy_(torch.tensor([0.5, -0.5]))
    return net.eval()


def make_seg_bundle(root: Path) -> Path:
    meta = {
        "version": "1.0.0", "task": "Dense tissue segmentation",
        "description": "Voxels denser than lung.",
        "intended_use": "Decision support: measures dense tissue in chest CT; a human checks.",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT",
                                 "num_channels": 1, "spatial_shape": [32, 32, 32],
                                 "dtype": "float32", "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                                 "spatial_shape": [32, 32, 32], "dtype": "float32",
                                 "channel_def": dict(enumerate(SEG_LABELS))}},
        },
    }
    inference = {**INFERENCE, "network_def": SEG_NETWORK_DEF}
    init_bundle(root, network=seg_network(), metadata_str=meta, inference_str=inference)
    return root


def test_a_segmentation_bundle_reports_each_label_s_volume(tmp_path: Path) -> None:
    from serving.imaging.dicom import decode_series
    from serving.imaging.pipeline import Payload, make_pipeline
    from serving.testing.samples import make_ct_series

    repo = tmp_path / "repo"
    import_model(repo, make_seg_bundle(tmp_path / "seg"), ImportOptions(name="dense-ct"))
    loaded = load_repository(repo)
    manifest = loaded.manifest("dense-ct")
    (version,) = manifest.versions
    assert manifest.task == "segmentation" and manifest.labels == SEG_LABELS
    assert manifest.modalities == ["CT"] and manifest.preprocessing.roi_size == (32, 32, 32)
    assert manifest.outputs[0].shape == [1, 2, -1, -1, -1]

    parts = make_ct_series(slices=24, rows=64, cols=64)
    pipeline = make_pipeline(manifest)
    x, source = pipeline.prepare(Payload("application/zip", parts))
    backend = TorchBackend(manifest, version, loaded.verify("dense-ct", version), "cpu")
    (y,) = asyncio.run(backend.run([x]))
    assert y.shape == (1, 2, *x.shape[2:])
    (dense,) = pipeline.findings(y, source)
    # what the network computes, counted independently on the model's grid
    voxel_ml = abs(np.linalg.det(source.affine[:3, :3])) / 1000
    want = int((x[0, 0] > 0.5).sum())
    assert dense == {"label": "dense", "voxels": want, "volume_ml": round(want * voxel_ml, 3)}
    # and it is the body: the phantom's elliptic cylinder less its two lungs, +-15 %
    volume = decode_series(parts, ["CT"])
    spacing = np.linalg.norm(volume.affine[:3, :3], axis=0)
    body_ml = float((volume.hu > -300).sum()) * float(np.prod(spacing)) / 1000
    assert dense["volume_ml"] == pytest.approx(body_ml, rel=0.15)
    assert source.mask is not None and source.mask.shape == x.shape[2:]


def test_a_segmentation_s_dicom_result_is_a_seg_over_the_source_slices(tmp_path: Path) -> None:
    """Accept: application/dicom on a segmentation model gives a DICOM SEG: one segment per
    label, frames on the source CT's own slices, read back with highdicom; it copies only the
    patient and study of the source, like an SR."""
    from io import BytesIO

    import highdicom as hd
    from pydicom import dcmread

    from serving.imaging.dicom import decode_series
    from serving.imaging.pipeline import Payload, make_pipeline
    from serving.imaging.segmentation import mask_on_series
    from serving.protocol.results import ResultFormat, for_task
    from serving.results.encode import encode_result
    from serving.testing.samples import make_ct_series
    from tests.phi import PREFIX, UID_ROOT, mark
    from tests.unit.test_results import REFERENCES, _patient_and_study_keywords

    repo = tmp_path / "repo"
    import_model(repo, make_seg_bundle(tmp_path / "seg"), ImportOptions(name="dense-ct"))
    loaded = load_repository(repo)
    manifest = loaded.manifest("dense-ct")
    (version,) = manifest.versions
    assert for_task(ResultFormat.DICOM_SR, manifest.task, explicit=False) \
        is ResultFormat.DICOM_SEG
    parts = [mark(p, i) for i, p in enumerate(make_ct_series(slices=16, rows=48, cols=48,
                                                             shuffle=False))]
    pipeline = make_pipeline(manifest)
    x, source = pipeline.prepare(Payload("application/zip", parts, ResultFormat.DICOM_SEG))
    backend = TorchBackend(manifest, version, loaded.verify("dense-ct", version), "cpu")
    (y,) = asyncio.run(backend.run([x]))
    findings = pipeline.findings(y, source)
    mask = mask_on_series(source.mask, source.affine, source.series_affine,
                          source.series_shape)
    assert mask.shape == source.series_shape
    data = encode_result(ResultFormat.DICOM_SEG, manifest, "1.0.0", findings, source.headers,
                         mask)
    seg = hd.seg.Segmentation.from_dataset(dcmread(BytesIO(data)))
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "dense" and segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentAlgorithmName == "dense-ct"
    # the frames, back on the source slices, are the resampled mask
    volume = decode_series(parts, ["CT"])
    by_position = {round(float(h.ImagePositionPatient[2]), 3): k
                   for k, h in enumerate(volume.headers)}
    got = np.zeros(mask.shape, dtype=np.uint8)
    pixels = seg.pixel_array
    for frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        z = round(float(item.PlanePositionSequence[0].ImagePositionPatient[2]), 3)
        got[:, :, by_position[z]] = pixels[frame].T
    np.testing.assert_array_equal(got, mask)
    # it measures the body on the source grid about as the JSON volume says (+-10 %)
    spacing = np.linalg.norm(volume.affine[:3, :3], axis=0)
    seg_ml = float(mask.sum()) * float(np.prod(spacing)) / 1000
    assert seg_ml == pytest.approx(findings[0]["volume_ml"], rel=0.10)
    # only the patient and study of the marked source, and the frame of reference a SEG
    # shares with the images it lies on
    allowed = _patient_and_study_keywords(volume.headers[0].SOPClassUID) | REFERENCES | {
        "FrameOfReferenceUID"}
    leaked = sorted({e.keyword for e in seg.iterall() if e.VR != "SQ" and e.keyword not in allowed
                     and (PREFIX in str(e.value).upper() or UID_ROOT in str(e.value))})
    assert leaked == []
    assert seg.PatientID == volume.headers[0].PatientID
