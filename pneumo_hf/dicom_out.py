"""Results back into the hospital: a DICOM Structured Report per film (TID 1500, through highdicom), a Secondary Capture
of the heatmap overlay, both in the source's study, and C-STORE into a PACS (pynetdicom), resumable.

    pneumo-hf predict export/ --output preds.csv --dicom_out results/ --heatmaps overlays/ \
        --store_to pacs.example.org:104 --calling_ae PNEUMOHF --called_ae ORTHANC

    from pneumo_hf.dicom_out import structured_report
    sr = predictor.to_dicom_sr(pydicom.dcmread("film.dcm"))           # a highdicom ComprehensiveSR, a pydicom Dataset

The report is a TID 1500 Measurement Report with one TID 1501 measurement group that references the source image
(Study, Series and SOP Instance UID): the decision as a coded qualitative evaluation (SNOMED CT 404684003 "Clinical
finding" = 233604007 "Pneumonia" or 17621005 "Normal"), the calibrated probability and the threshold as numbers (codes of this
project, scheme 99PNEUMOHF, where no standard code exists), and the model as TID 4019 algorithm identification (name,
revision, weights sha256). The domain warnings and "not a medical device" are TEXT comments (DCM 121106) on the
report's root. New UIDs are generated for every object; the source is only read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from .errors import UserError
from .labels import NOT_A_DEVICE, POSITIVE_LABEL

logger = logging.getLogger(__name__)

__all__ = ["ModelIdentity", "NOT_A_DEVICE", "StoreError", "identity_of", "secondary_capture", "store", "structured_report", "DicomSink"]

MANUFACTURER = "pneumo-hf"
FINDING = Code("404684003", "SCT", "Clinical finding")
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
NORMAL = Code("17621005", "SCT", "Normal")
PROBABILITY = Code("P-PNEUMONIA", "99PNEUMOHF", "Calibrated probability of pneumonia")
THRESHOLD = Code("THRESHOLD", "99PNEUMOHF", "Decision threshold")
CHEST_X_RAY = Code("399208008", "SCT", "Plain chest X-ray")
COMMENT = Code("121106", "DCM", "Comment")
UNITY = Code("1", "UCUM", "no units")
LEDGER = "stored.json"
REFERENCED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")  # what a report must name of its film


class StoreError(UserError, RuntimeError):
    """The PACS could not be reached or refused an association; the message says what to check, `files` what was not stored."""

    def __init__(self, message: str, files: Sequence[Path]):
        super().__init__(message)
        self.files = list(files)


@dataclass(frozen=True)
class ModelIdentity:
    """Which model answered: its name, revision (Hub commit or weights hash) and the sha256 of its weights."""

    name: str
    revision: str
    weights_sha256: str


def structured_report(
    source: Dataset, decision: str, probability: float, threshold: float, warnings: Sequence[str], model: ModelIdentity, series: Optional[tuple[str, int]] = None
) -> hd.sr.ComprehensiveSR:
    """A TID 1500 report of one prediction on the film `source`, in its study: in `series` (UID, instance number) when
    given, so that a run's reports of one study share a series; else a new series of its own."""
    series_uid, instance_number = series or (generate_uid(), 1)
    algorithm = hd.sr.AlgorithmIdentification(
        name=model.name[:64], version=model.revision[:64], parameters=[f"weights sha256 {model.weights_sha256}", f"decision threshold {threshold:.6f}"], manufacturer=MANUFACTURER
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="pneumonia classification"),
        algorithm_id=algorithm,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(FINDING, PNEUMONIA if decision == POSITIVE_LABEL else NORMAL)],
        measurements=[
            hd.sr.Measurement(name=PROBABILITY, value=float(probability), unit=UNITY, algorithm_id=algorithm),
            hd.sr.Measurement(name=THRESHOLD, value=float(threshold), unit=UNITY, algorithm_id=algorithm),
        ],
    )
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=generate_uid(), name=model.name[:64], manufacturer_name=MANUFACTURER, model_name=model.revision[:64]),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device), procedure_reported=CHEST_X_RAY, imaging_measurements=[group]
    )
    for text in [*warnings, NOT_A_DEVICE]:
        report[0].ContentSequence.append(hd.sr.TextContentItem(name=COMMENT, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    document = hd.sr.ComprehensiveSR(
        evidence=[source], content=report[0], series_instance_uid=series_uid, series_number=9901, sop_instance_uid=generate_uid(), instance_number=instance_number,
        manufacturer=MANUFACTURER, is_complete=True, series_description="pneumo-hf result (not a medical device)",
    )
    scheme = Dataset()  # the private coding scheme, declared as DICOM asks of a "99" designator
    scheme.CodingSchemeDesignator, scheme.CodingSchemeName, scheme.CodingSchemeResponsibleOrganization = "99PNEUMOHF", "pneumo-hf result codes", "pneumo-hf"
    document.CodingSchemeIdentificationSequence = [scheme]
    return document


def secondary_capture(source: Dataset, overlay: np.ndarray, series: Optional[tuple[str, int]] = None) -> hd.sc.SCImage:
    """The heatmap overlay (RGB uint8, the film's size) as a Secondary Capture in the source's study: in `series` (UID,
    instance number) when given, else a new series."""
    series_uid, instance_number = series or (generate_uid(), 1)
    orientation = tuple(getattr(source, "PatientOrientation", None) or ("L", "F"))
    capture = hd.sc.SCImage.from_ref_dataset(
        source, np.ascontiguousarray(overlay, dtype=np.uint8), hd.PhotometricInterpretationValues.RGB, 8, hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_uid, series_number=9902, sop_instance_uid=generate_uid(), instance_number=instance_number, manufacturer=MANUFACTURER,
        patient_orientation=orientation, series_description="pneumo-hf heatmap (not a medical device)",
    )
    capture.BodyPartExamined = getattr(source, "BodyPartExamined", None) or "CHEST"
    if "Laterality" in capture:  # the chest is not a paired structure: Laterality must be absent (type 2C)
        del capture.Laterality
    return capture


class DicomSink:
    """The batch command's DICOM results (`pneumo_hf.records` sink): for each DICOM film, its report (and with
    `heatmaps` its capture) in `folder/<StudyInstanceUID>/`, written from the film's record as it comes. A film with
    its files keeps them (and their UIDs) and is not predicted again for them; one series of each kind per study."""

    def __init__(self, predictor, folder: Path, heatmaps: bool = False):
        self.folder, self.heatmaps, self.model = folder, heatmaps, identity_of(predictor)
        self.headers: dict[str, Optional[Dataset]] = {}  # key -> the DICOM film's header (None: unreadable), read once
        self.series: dict[tuple[str, str], list] = {}  # (study, kind) -> [series UID, instances so far]

    def pending(self, films) -> set[str]:
        from .imaging import is_dicom_file

        self.headers = {film.key: _header(Path(film.path)) for film in films if film.path and Path(film.path).is_file() and is_dicom_file(film.path)}
        if len(self.headers) < len(films):
            logger.warning("%d of %d inputs are not DICOM files: they get no DICOM results (their rows are in the table).", len(films) - len(self.headers), len(films))
        return {key for key, source in self.headers.items() if not all(target.is_file() for target in self.targets(source) or ())}

    def targets(self, source: Optional[Dataset]) -> Optional[list[Path]]:
        """The report's (and capture's) path for the film `source`; None when it lacks what a report must reference."""
        if source is None or any(not source.get(name) for name in REFERENCED):
            return None
        folder = self.folder / str(source.StudyInstanceUID)
        return [folder / f"{source.SOPInstanceUID}.sr.dcm", *([folder / f"{source.SOPInstanceUID}.sc.dcm"] if self.heatmaps else [])]

    def write(self, records) -> None:
        from .cam import overlay as blend

        for record in records:
            source = self.headers.get(record.key)
            if record.prediction is None:
                continue
            targets = self.targets(source)
            if targets is None:
                continue
            targets[0].parent.mkdir(parents=True, exist_ok=True)
            prediction, study = record.prediction, str(source.StudyInstanceUID)
            if not targets[0].is_file():
                report = structured_report(source, prediction.decision, record.probability, prediction.threshold, prediction.warnings, self.model, self._next_in(study, "sr"))
                _save(report, targets[0])
            if self.heatmaps and not targets[1].is_file():
                _save(secondary_capture(source, np.asarray(blend(prediction.image, prediction.heatmap)), self._next_in(study, "sc")), targets[1])

    def _next_in(self, study: str, kind: str) -> tuple[str, int]:
        entry = self.series.setdefault((study, kind), [generate_uid(), 0])
        entry[1] += 1
        return entry[0], entry[1]

    def close(self) -> None:
        pass

    def results(self) -> tuple[list[Path], list[str]]:
        """Every file now in place for the DICOM films, and a sentence for each DICOM film that has none."""
        written, problems = [], []
        for key, source in self.headers.items():
            targets = self.targets(source)
            if targets is None:
                missing = [name for name in REFERENCED if source is None or not source.get(name)]
                problems.append(f"{key}: no DICOM result: it lacks {', '.join(missing)}, which a report must reference; export the film from the PACS with them.")
            elif all(target.is_file() for target in targets):
                written += targets
        return written, problems


def _header(path: Path) -> Optional[Dataset]:
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - a damaged file gets no result; its row in the table holds its error
        return None


def _save(dataset: Dataset, path: Path) -> None:
    temporary = path.with_name(path.name + ".tmp")
    dataset.save_as(temporary, enforce_file_format=True)
    temporary.replace(path)


def store(files: Sequence[Path], folder: Path, host: str, port: int, calling_ae: str, called_ae: str) -> dict[Path, str]:
    """C-STORE the `files` not yet stored (by `folder/stored.json`) and record what the PACS answered for each.
    Returns file → the PACS's answer for this run's sends; raises StoreError when no association can be made."""
    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage

    ledger_path = folder / LEDGER
    ledger = json.loads(ledger_path.read_text()) if ledger_path.is_file() else {}
    pending = [path for path in files if ledger.get(str(path.relative_to(folder))) != "stored"]
    if not pending:
        return {}
    ae = AE(ae_title=calling_ae)
    for sop_class in (ComprehensiveSRStorage, SecondaryCaptureImageStorage):
        ae.add_requested_context(sop_class)
    association = ae.associate(host, port, ae_title=called_ae)
    if not association.is_established:
        raise StoreError(f"The PACS at {host}:{port} (called AE {called_ae}) did not accept an association from {calling_ae}: check that it runs, --store_to and the AE titles.", pending)
    answers = {}
    try:
        for path in pending:
            status = association.send_c_store(pydicom.dcmread(path))
            code = getattr(status, "Status", None)
            answers[path] = "stored" if code == 0x0000 else (f"refused (status 0x{code:04X})" if code is not None else "no answer (the association dropped)")
            ledger[str(path.relative_to(folder))] = answers[path]
            ledger_path.write_text(json.dumps(ledger, indent=2))
    finally:
        association.release()
    return answers


def identity_of(predictor) -> ModelIdentity:
    """The predictor's model as the report names it."""
    return ModelIdentity(predictor.name, predictor.revision or "", predictor.model_folder.weights_sha256(64) if predictor.folder else "")
