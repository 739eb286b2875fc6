"""The result as DICOM: a TID 1500 Comprehensive SR per image, built with highdicom.

The report carries the pneumonia probability (a NUM), the finding at the model's operating
threshold (a qualitative evaluation: Pneumonia = Yes / No), the algorithm's name, version and
model-card fingerprint, and a reference to the source image. It joins the source's Study in a
Series of its own (one per Study); its UIDs derive from the source's SOP Instance UID and content
digest, so sending the same image twice yields the same report, which PACS stores once.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from cxr.client.protocol import Prediction

MANUFACTURER = "cxr-triage"
#: The wording every report carries (Series Description and the algorithm's parameters).
DISCLAIMER = "NOT FOR DIAGNOSTIC USE"
SERIES_DESCRIPTION = f"cxr-triage AI triage - {DISCLAIMER}"
SERIES_NUMBER = 9901
#: Private coding scheme for the concept no public scheme names: the model's probability.
CODING_SCHEME = "99CXRTRIAGE"
PROBABILITY_CODE = ("PNEUMONIA-PROB", CODING_SCHEME, "Pneumonia probability")
PNEUMONIA_CODE = ("233604007", "SCT", "Pneumonia")
CHEST_XRAY_CODE = ("399208008", "SCT", "Plain chest X-ray")
#: Type 2 attributes (Patient and General Study modules) the report copies from its source:
#: required present, may be empty. Many modality images omit some; they are added empty.
COPIED_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


@dataclass
class Algorithm:
    """What produced the result: the served model, its version and its model card."""

    name: str
    version: str
    threshold: float
    fingerprint: str


def derived_uid(*parts: str) -> str:
    """A ``2.25`` UID (PS3.5 B.2: a 128-bit number) determined by ``parts``: the same parts
    give the same UID. (pydicom's ``generate_uid`` ignores its entropy sources under ``2.25``.)"""
    digest = hashlib.sha256("\0".join(["cxr-triage", *parts]).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def report_uids(source_sop_uid: str, digest: str, study_uid: str) -> tuple[str, str]:
    """The report's (Series Instance UID, SOP Instance UID)."""
    return derived_uid("sr-series", study_uid), derived_uid("sr", source_sop_uid, digest)


def build_report(
    source: Dataset, digest: str, prediction: Prediction, algorithm: Algorithm, ae_title: str
) -> Dataset:
    """The Comprehensive SR for one triaged image (``source``: its header, pixels not needed)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    def concept(code: tuple[str, str, str]) -> hd.sr.CodedConcept:
        return hd.sr.CodedConcept(value=code[0], scheme_designator=code[1], meaning=code[2])

    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=[
            f"threshold={algorithm.threshold:.6g}",
            f"model_card_fingerprint={algorithm.fingerprint}",
            DISCLAIMER,
        ],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", ae_title),
            name=ae_title,
            manufacturer_name=MANUFACTURER,
            model_name=algorithm.name,
        ),
    )
    source = copy.deepcopy(source)  # the caller's header stays as it was (no pixels: cheap)
    for keyword in COPIED_TYPE2:
        if keyword not in source:
            setattr(source, keyword, None)
    sop_uid = str(source.SOPInstanceUID)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid("tracking", sop_uid, digest), identifier="pneumonia triage"
        ),
        algorithm_id=algorithm_id,
        measurements=[
            hd.sr.Measurement(
                name=concept(PROBABILITY_CODE),
                value=round(float(prediction.pneumonia_probability), 6),
                unit=hd.sr.CodedConcept(value="1", scheme_designator="UCUM", meaning="no units"),
                algorithm_id=algorithm_id,
            )
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=concept(PNEUMONIA_CODE),
                value=codes.SCT.Yes if prediction.urgent else codes.SCT.No,
            )
        ],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=str(source.SOPClassUID),
                referenced_sop_instance_uid=sop_uid,
            )
        ],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=concept(CHEST_XRAY_CODE),
        imaging_measurements=[group],
    )
    series_uid, report_uid = report_uids(sop_uid, digest, str(source.StudyInstanceUID))
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report,
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=report_uid,
        instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer=MANUFACTURER,
        is_complete=True,
    )
    sr.SeriesDescription = SERIES_DESCRIPTION
    return sr
