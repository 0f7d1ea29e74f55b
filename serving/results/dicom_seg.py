"""A segmentation as a DICOM Segmentation (SEG), via highdicom: one segment per
non-background label, its frames laid over the source CT's own slices.

Each segment names its label's code as the segmented property type, the algorithm (model,
version; its parameters: the intended use and the decision-support notice) and is AUTOMATIC;
the content description carries the decision-support notice. Patient and study come from
the source, as in an SR (serving/results/dicom_sr.py), and the UIDs are deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from serving.errors import UnprocessableInput
from serving.results.dicom_sr import with_type2
from serving.results.identity import Algorithm, result_instance, source_uids

BACKGROUND = "background"


CATEGORIES = {"organ": codes.SCT.Organ, "tissue": codes.SCT.Tissue,
              "abnormal": codes.SCT.MorphologicallyAbnormalStructure}


def segmentation(
    mask: np.ndarray, labels: Sequence[str], codes_by_label: dict[str, Code],
    categories: Mapping[str, str], headers: Sequence[Dataset], algorithm: Algorithm,
) -> Dataset:
    """`mask` is [X, Y, Z] on the series' voxels (slice order of `headers`), each value the
    index of its label (one label: 1 for the label)."""
    sources = source_uids(headers)
    if mask.shape[2] != len(headers):
        raise UnprocessableInput("the segmentation does not match the series' slices")
    channels = [1] if len(labels) == 1 else [i for i, label in enumerate(labels)
                                             if label.lower() != BACKGROUND]
    algorithm_id = hd.AlgorithmIdentificationSequence(
        name=algorithm.model, family=codes.cid7162.ArtificialIntelligence,
        version=algorithm.version,
        parameters={"intended use": algorithm.intended_use[:1000],
                    "decision support": algorithm.decision_support},
    )
    segments = []
    frames = np.zeros((len(headers), mask.shape[1], mask.shape[0]), dtype=np.uint8)
    for number, channel in enumerate(channels, start=1):
        label = labels[channel if len(labels) > 1 else 0]
        segments.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label[:64],
            segmented_property_category=CATEGORIES[categories.get(label, "abnormal")],
            segmented_property_type=codes_by_label[label],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm_id,
        ))
        frames[np.transpose(mask, (2, 1, 0)) == channel] = number
    try:
        return hd.seg.Segmentation(
            source_images=with_type2(headers),
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segments,
            device_serial_number="0",
            content_description="Decision support only: a clinician makes the decision",
            content_label="AI_RESULT",
            omit_empty_frames=False,
            **result_instance("seg", algorithm, headers, sources),
        )
    except (AttributeError, ValueError, TypeError):
        raise UnprocessableInput("the source instances lack the patient, study, series or "
                                 "geometry attributes a DICOM SEG must have") from None
