"""Results back into the hospital: DICOM Structured Reports and heatmap captures valid by dicom3tools' dciodvfy, read
back by pydicom and highdicom, and stored into a real Orthanc (Debian's, started here on free loopback ports with
temporary storage; `.ci/run` installs it)."""

import csv
import io
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pneumo_hf import load_predictor
from pneumo_hf.examples import find_examples
from pneumo_hf.labels import NOT_A_DEVICE

ORTHANC = shutil.which("Orthanc")
DCIODVFY = shutil.which("dciodvfy")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cr_film(film: Path, path: Path, study: str, patient: str) -> Path:
    """A film as a PACS holds it: a Computed Radiography image with its patient, study and series (12 bits)."""
    pixels = np.asarray(Image.open(film).convert("L")).astype(np.uint16) * 16
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = "1.2.840.10008.5.1.4.1.1.1", generate_uid(), ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient, "P0001", "20200101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.StudyDate, ds.StudyTime = study, generate_uid(), "20241105", "101500"
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "ACC1", "", "S1", "CR", 1, 1
    ds.BodyPartExamined, ds.ViewPosition, ds.PatientOrientation, ds.ImageType = "CHEST", "AP", ["L", "F"], ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, "MONOCHROME2", 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def export(tmp_path) -> Path:
    """A PACS export: two films of one study named by UID with no suffix, and a JPEG beside them."""
    folder = tmp_path / "export"
    folder.mkdir()
    study = generate_uid()
    films = find_examples()[0]
    for film in (next(f for f in films if f.parent.name == "PNEUMONIA"), next(f for f in films if f.parent.name == "NORMAL")):
        cr_film(film, folder / generate_uid(), study, "Doe^Jane")
    shutil.copy(films[0], folder / "photo.jpeg")
    return folder


@pytest.fixture
def orthanc(tmp_path):
    """Orthanc on free loopback ports, its database and files in tmp_path; yields (REST URL, DICOM port)."""
    if ORTHANC is None:
        pytest.skip("Debian's orthanc is not installed (.ci/run installs it)")
    http, dicom = free_port(), free_port()
    config = {
        "Name": "pneumo-hf-test", "StorageDirectory": str(tmp_path / "orthanc"), "IndexDirectory": str(tmp_path / "orthanc"),
        "HttpPort": http, "DicomPort": dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomCheckCalledAet": True, "DicomAlwaysAllowStore": True, "Plugins": [],
    }
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen([ORTHANC, str(tmp_path / "orthanc.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{http}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/system", timeout=2).close()
            break
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                raise RuntimeError("Orthanc did not start") from None
            time.sleep(0.3)
    yield url, dicom
    process.terminate()
    process.wait(timeout=30)


def rest(url: str, data: bytes = None):
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as response:
        body = response.read()
    return json.loads(body) if body[:1] in (b"{", b"[") else body


def predict(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pneumo_hf", "predict", *arguments], capture_output=True, text=True, timeout=600)


def test_reports_and_captures_are_stored_into_orthanc_and_a_rerun_sends_nothing_twice(tmp_path, export, orthanc):
    url, port = orthanc
    for source in sorted(export.iterdir()):
        if source.suffix != ".jpeg":
            rest(f"{url}/instances", source.read_bytes())  # the study as the PACS held it before
    out, csv_path = tmp_path / "results", tmp_path / "preds.csv"
    store = ["--store_to", f"127.0.0.1:{port}", "--calling_ae", "PNEUMOHF", "--called_ae", "ORTHANC"]
    done = predict(str(export), "--output", str(csv_path), "--dicom_out", str(out), "--heatmaps", str(tmp_path / "overlays"), *store)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.count("are not DICOM files") == 1 and "1 of 3 inputs are not DICOM files" in done.stderr  # said once
    assert done.stdout.count(": stored") == 4 and "4 stored now, 0 stored before" in done.stdout

    rows = {Path(row["path"]).name: row for row in csv.DictReader(csv_path.open())}
    (study,) = rest(f"{url}/studies")
    instances = rest(f"{url}/studies/{study}/instances")
    classes = [rest(f"{url}/instances/{instance['ID']}/simplified-tags")["SOPClassUID"] for instance in instances]
    assert classes.count("1.2.840.10008.5.1.4.1.1.88.33") == 2 and classes.count("1.2.840.10008.5.1.4.1.1.7") == 2 and len(instances) == 6  # + the 2 films
    assert len(rest(f"{url}/studies/{study}/series")) == 2 + 2  # the films' own two series, one of reports, one of captures
    for instance in instances:
        dataset = pydicom.dcmread(io.BytesIO(rest(f"{url}/instances/{instance['ID']}/file")))
        if dataset.SOPClassUID != "1.2.840.10008.5.1.4.1.1.88.33":
            continue
        group = hd.sr.ComprehensiveSR.from_dataset(dataset).content.get_image_measurement_groups()[0]
        source = group.source_images[0].referenced_sop_instance_uid
        row = next(row for name, row in rows.items() if pydicom.dcmread(export / name).SOPInstanceUID == source)
        (finding,) = group.get_qualitative_evaluations()
        assert finding.value.meaning.upper() == row["decision"]  # Pneumonia / Normal, as the CSV says
        measured = {measurement.name.meaning: measurement.value for measurement in group.get_measurements()}
        assert measured["Calibrated probability of pneumonia"] == pytest.approx(float(row["probability_PNEUMONIA"]), abs=1e-6)
        assert measured["Decision threshold"] == pytest.approx(float(row["threshold"]), abs=1e-6)

    again = predict(str(export), "--output", str(csv_path), "--dicom_out", str(out), "--heatmaps", str(tmp_path / "overlays"), *store)
    assert again.returncode == 0 and "0 stored now, 4 stored before" in again.stdout, again.stdout + again.stderr
    assert len(rest(f"{url}/studies/{study}/instances")) == 6


def test_a_pacs_that_is_down_gets_a_sentence_per_film_and_the_files_wait_for_the_next_run(tmp_path, export, orthanc):
    url, port = orthanc
    out, csv_path = tmp_path / "results", tmp_path / "preds.csv"
    down = predict(str(export), "--output", str(csv_path), "--dicom_out", str(out), "--store_to", f"127.0.0.1:{free_port()}", "--called_ae", "ORTHANC")
    assert down.returncode == 1 and "Traceback" not in down.stderr
    refused = [line for line in down.stdout.splitlines() if "not stored. The PACS at 127.0.0.1:" in line]
    assert len(refused) == 2 and len(list(out.rglob("*.sr.dcm"))) == 2  # one sentence per film; the reports stay
    later = predict(str(export), "--output", str(csv_path), "--dicom_out", str(out), "--store_to", f"127.0.0.1:{port}", "--called_ae", "ORTHANC")
    assert later.returncode == 0 and "2 stored now, 0 stored before" in later.stdout, later.stdout + later.stderr
    wrong_ae = predict(str(export), "--output", str(csv_path), "--dicom_out", str(tmp_path / "other"), "--store_to", f"127.0.0.1:{port}", "--called_ae", "NOT-ORTHANC")
    assert wrong_ae.returncode == 1 and "did not accept an association" in wrong_ae.stdout


@pytest.mark.skipif(DCIODVFY is None, reason="dicom3tools is not installed (.ci/run installs it)")
def test_every_object_written_passes_dciodvfy_and_reads_back_the_same(tmp_path, export):
    predictor = load_predictor()
    source = pydicom.dcmread(next(path for path in export.iterdir() if path.suffix != ".jpeg"))
    report = predictor.to_dicom_sr(source)
    report.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    done = predict(str(export), "--output", str(tmp_path / "p.csv"), "--dicom_out", str(tmp_path / "out"), "--heatmaps", str(tmp_path / "overlays"))
    assert done.returncode == 0, done.stderr
    written = [tmp_path / "report.dcm", *sorted((tmp_path / "out").rglob("*.dcm"))]
    assert len(written) == 5
    for path in written:
        checked = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True)
        errors = [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], (path.name, errors)
    read = hd.sr.srread(tmp_path / "report.dcm")
    assert read.StudyInstanceUID == source.StudyInstanceUID and read.PatientName == source.PatientName and read.PatientID == source.PatientID
    assert read.SeriesInstanceUID != source.SeriesInstanceUID and read.SOPInstanceUID != source.SOPInstanceUID  # new UIDs, never copied
    texts = [item.TextValue for item in read.ContentSequence if item.ValueType == "TEXT"]
    assert NOT_A_DEVICE in texts
    algorithm = [item.TextValue for item in read.content.get_image_measurement_groups()[0][0].ContentSequence if item.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"]
    assert any(len(text.split()[-1]) == 64 for text in algorithm if text.startswith("weights sha256"))
    capture = pydicom.dcmread(next((tmp_path / "out").rglob("*.sc.dcm")))
    assert capture.StudyInstanceUID == source.StudyInstanceUID and capture.PhotometricInterpretation == "RGB" and capture.pixel_array.ndim == 3


def test_a_dicom_film_without_its_study_gets_a_sentence_and_keeps_its_row(tmp_path):
    from conftest import make_dicom, xray_like

    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "bare.dcm").write_bytes(make_dicom(xray_like(3, (96, 80))))  # pixels, but no study, series or patient
    csv_path = tmp_path / "not" / "yet" / "preds.csv"  # --output in a folder that does not exist yet
    done = predict(str(folder), "--output", str(csv_path), "--dicom_out", str(tmp_path / "results"))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "bare.dcm: no DICOM result: it lacks StudyInstanceUID, SeriesInstanceUID, which a report must reference" in done.stdout
    rows = list(csv.DictReader(csv_path.open()))
    from pneumo_hf import load_predictor
    from pneumo_hf.imaging import load_image

    expected = load_predictor().predict(load_image(folder / "bare.dcm"))  # the row is the film's own prediction
    assert len(rows) == 1 and rows[0]["decision"] == expected.decision and not rows[0]["error"]
    assert float(rows[0]["probability_PNEUMONIA"]) == pytest.approx(expected.probabilities["PNEUMONIA"], abs=1e-4)


def test_every_sink_is_fed_by_one_model_pass_per_film_and_a_new_sink_predicts_only_what_it_lacks(tmp_path, export):
    from torch import nn

    from pneumo_hf.batch import CsvSink, OverlaySink, collect_inputs, predict_archive
    from pneumo_hf.dicom_out import DicomSink

    predictor, films = load_predictor(), collect_inputs([str(export)])
    through = []  # films through the model's first convolution: every pass, the heatmap's included
    first_convolution = next(module for module in predictor.classifier.modules() if isinstance(module, nn.Conv2d))
    hook = first_convolution.register_forward_hook(lambda module, inputs, output: through.append(len(inputs[0])))
    try:
        table = tmp_path / "preds.csv"
        first = predict_archive(predictor, films, [CsvSink(table)], num_workers=0)
        assert (first["predicted"], sum(through)) == (3, 3)
        through.clear()
        sinks = [CsvSink(table), OverlaySink(tmp_path / "overlays"), DicomSink(predictor, tmp_path / "results", heatmaps=True)]
        again = predict_archive(predictor, films, sinks, num_workers=0)
        assert (again["predicted"], again["skipped"], sum(through)) == (3, 0, 3)  # the overlays need all three; once each for all sinks
        through.clear()
        assert predict_archive(predictor, films, sinks, num_workers=0)["predicted"] == 0 and sum(through) == 0
    finally:
        hook.remove()
    written, problems = sinks[2].results()
    assert len(written) == 4 and problems == [] and len(list((tmp_path / "overlays").iterdir())) == 3
    rows = {row["path"]: row for row in csv.DictReader(table.open())}
    for report in (tmp_path / "results").rglob("*.sr.dcm"):  # the report says what the table says, from the same pass
        group = hd.sr.srread(report).content.get_image_measurement_groups()[0]
        source = group.source_images[0].referenced_sop_instance_uid
        row = next(row for path, row in rows.items() if not path.endswith(".jpeg") and pydicom.dcmread(path).SOPInstanceUID == source)
        measured = {measurement.name.meaning: measurement.value for measurement in group.get_measurements()}
        assert measured["Calibrated probability of pneumonia"] == pytest.approx(float(row["probability_PNEUMONIA"]), abs=1e-6)
