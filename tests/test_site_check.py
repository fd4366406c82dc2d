"""Checking the model on a site's own films: safe unpacking, labelled films found, figures equal to scikit-learn's on
the predictor's own outputs and to `pneumo-hf evaluate`'s, and `pneumo-hf calibrate`."""

import csv
import json
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard
from sklearn import metrics as skm

from pneumo_hf import load_predictor
from pneumo_hf.examples import EXAMPLE_FILMS, find_examples
from pneumo_hf.inference import DEFAULT_MODEL_DIR
from pneumo_hf.site_check import ArchiveError, check_archive, labelled_films, safe_extract


def make_zip(path: Path, entries: dict[str, bytes], links: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in entries.items():
            bundle.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            bundle.writestr(info, "/etc/passwd")
    return path


def example_zip(path: Path, extra: dict[str, bytes] = None) -> Path:
    """The package's eight example films as a site zips them: NORMAL/ and PNEUMONIA/ two folders deep."""
    films = {f"hospital/2024/{film.parent.name}/{film.name}": film.read_bytes() for film in find_examples()[0]}
    return make_zip(path, {**films, **(extra or {})})


@pytest.mark.parametrize("entries, links, message", [
    ({"../outside.jpeg": b"x"}, (), "points outside the archive"),
    ({"NORMAL/../../outside.jpeg": b"x"}, (), "points outside the archive"),
    ({"/etc/cron.d/film.jpeg": b"x"}, (), "points outside the archive"),
    ({"C:/Windows/film.jpeg": b"x"}, (), "points outside the archive"),
    ({"NORMAL/a.jpeg": b"x"}, ("NORMAL/link.jpeg",), "is a link"),
    ({"NORMAL/bomb.dcm": bytes(50 * 2**20)}, (), "compressed .* times \\(a zip bomb\\?\\)"),
])
def test_unsafe_archives_are_refused_before_anything_is_written(tmp_path, entries, links, message):
    archive = make_zip(tmp_path / "films.zip", entries, links)
    target = tmp_path / "unpacked"
    with pytest.raises(ArchiveError, match=message):
        safe_extract(archive, target)
    assert not target.exists() and not (tmp_path / "outside.jpeg").exists()


def test_too_many_films_and_too_many_bytes_are_refused(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "films.zip", {f"NORMAL/{i}.jpeg": bytes(100) for i in range(12)})
    monkeypatch.setattr("pneumo_hf.site_check.MAX_FILMS", 10)
    with pytest.raises(ArchiveError, match="holds 12 files; the limit is 10 films"):
        safe_extract(archive, tmp_path / "a")
    monkeypatch.setattr("pneumo_hf.site_check.MAX_FILMS", 1000)
    monkeypatch.setattr("pneumo_hf.site_check.MAX_UNPACKED_BYTES", 1000)
    with pytest.raises(ArchiveError, match="unpacks to 0 MB, over the 0 MB limit"):
        safe_extract(archive, tmp_path / "b")
    (tmp_path / "not.zip").write_bytes(b"PK but not really")
    with pytest.raises(ArchiveError, match="not a .zip archive"):
        safe_extract(tmp_path / "not.zip", tmp_path / "c")


def test_films_are_found_by_folder_at_any_depth_or_by_labels_csv(tmp_path):
    archive = example_zip(tmp_path / "films.zip", {"__MACOSX/hospital/2024/NORMAL/._IM-0372-0001.jpeg": b"junk", "hospital/notes.txt": b"x"})
    safe_extract(archive, tmp_path / "folders")
    found = labelled_films(tmp_path / "folders")
    assert len(found) == 8 and sorted({label for _, _, label in found}) == [0, 1] and not any("__MACOSX" in name for name, _, _ in found)
    films = {film.name: film for film in find_examples()[0]}
    listing = "file,label\n" + "".join(f"scans/{name},{film.parent.name.lower()}\n" for name, film in films.items())
    make_zip(tmp_path / "listed.zip", {**{f"scans/{name}": film.read_bytes() for name, film in films.items()}, "labels.csv": listing.encode()})
    safe_extract(tmp_path / "listed.zip", tmp_path / "listed")
    assert sorted((Path(name).name, label) for name, _, label in labelled_films(tmp_path / "listed")) == sorted((name, int(film.parent.name == "PNEUMONIA")) for name, film in films.items())
    for listed in ("../../outside.jpeg", "/etc/passwd", ""):  # labels.csv may only name films inside the archive
        make_zip(tmp_path / "escape.zip", {"labels.csv": f"file,label\n{listed},NORMAL\n".encode()})
        shutil.rmtree(tmp_path / "escape", ignore_errors=True)
        safe_extract(tmp_path / "escape.zip", tmp_path / "escape")
        with pytest.raises(ArchiveError, match="labels.csv line 2: file .* is not a file inside the archive"):
            labelled_films(tmp_path / "escape")
    make_zip(tmp_path / "bare.zip", {"scan.jpeg": b"x"})
    safe_extract(tmp_path / "bare.zip", tmp_path / "bare")
    with pytest.raises(ArchiveError, match="No labelled films"):
        labelled_films(tmp_path / "bare")


def test_the_figures_equal_scikit_learns_on_the_predictors_outputs_and_evaluates(tmp_path):
    from pneumo_hf.commands import evaluate

    predictor = load_predictor()
    archive = example_zip(tmp_path / "films.zip", {"hospital/2024/PNEUMONIA/broken.jpeg": b"not a film"})
    summary, records = check_archive(predictor, archive, tmp_path / "work", tmp_path / "films.csv")
    assert not (tmp_path / "work").exists()  # the unpacked films are gone
    assert summary["errors"] == [{"file": "hospital/2024/PNEUMONIA/broken.jpeg", "error": records[4].error}] and "not an image" in records[4].error
    films = find_examples()[0]
    labels = np.array([int(film.parent.name == "PNEUMONIA") for film in films])
    scores = np.array([prediction.probabilities["PNEUMONIA"] for prediction in predictor.predict_batch(films)])
    decided = (scores >= predictor.threshold).astype(int)
    (tn, fp), (fn, tp) = skm.confusion_matrix(labels, decided)
    assert summary["n"] == 8 and summary["confusion"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    assert summary["accuracy"] == pytest.approx(skm.accuracy_score(labels, decided)) and summary["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-6)
    assert summary["sensitivity"] == pytest.approx(skm.recall_score(labels, decided)) and summary["specificity"] == pytest.approx(tn / (tn + fp))
    measured = evaluate.run(evaluate.parse_args(["--model", str(DEFAULT_MODEL_DIR), "--data_dir", str(EXAMPLE_FILMS), "--output_json", str(tmp_path / "e.json")]))
    assert [[summary["confusion"]["tn"], summary["confusion"]["fp"]], [summary["confusion"]["fn"], summary["confusion"]["tp"]]] == measured["confusion_matrix"]
    for ours, theirs in (("accuracy", "accuracy"), ("roc_auc", "roc_auc"), ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("ece", "ece")):
        assert summary[ours] == pytest.approx(measured[theirs], abs=1e-5), ours
    bins = np.minimum((scores * 10).astype(int), 9)  # the new key: ECE of P(PNEUMONIA) itself over 10 bins
    assert summary["ece_pneumonia"] == pytest.approx(sum((bins == b).mean() * abs(labels[bins == b].mean() - scores[bins == b].mean()) for b in set(bins)), abs=1e-6)
    header = (tmp_path / "films.csv").read_text().splitlines()[0]
    assert header == "path,decision,probability_NORMAL,probability_PNEUMONIA,threshold,warnings,error,label"


def test_calibrate_meets_the_sensitivity_keeps_the_weights_and_says_so(tmp_path):
    from pneumo_hf.commands import calibrate

    films = tmp_path / "films"
    shutil.copytree(EXAMPLE_FILMS, films, ignore=shutil.ignore_patterns("README.md"))
    output = tmp_path / "calibrated"
    assert calibrate.main(["--model", str(DEFAULT_MODEL_DIR), "--data_dir", str(films), "--min_sensitivity", "1.0", "--output_dir", str(output), "--repeats", "2"]) == 0
    assert (output / "model.safetensors").read_bytes() == (DEFAULT_MODEL_DIR / "model.safetensors").read_bytes()
    report = json.loads((output / "calibration.json").read_text())
    calibrated = load_predictor(output)
    assert calibrated.threshold == report["after"]["threshold"] != load_predictor().threshold
    pneumonia = [film for film in films.rglob("*.jpeg") if film.parent.name == "PNEUMONIA"]
    assert all(prediction.decision == "PNEUMONIA" for prediction in calibrated.predict_batch(pneumonia))  # sensitivity ≥ 1.0 on its folder
    assert report["after"]["sensitivity"] >= 1.0 and report["crossfit"]["refit"]["halves"] == 4
    # Platt's by default: the calibrated folder's P(PNEUMONIA) is sigmoid(logit difference / temperature + intercept)
    assert report["method"] == "platt" and report["after"]["intercept"] != 0.0 and len(report["films_sha256"]) == 64
    film = pneumonia[0]
    before, after = load_predictor().predict(film).probabilities["PNEUMONIA"], calibrated.predict(film).probabilities["PNEUMONIA"]
    difference = load_predictor().classifier.temperature * np.log(before / (1 - before))
    assert after == pytest.approx(1 / (1 + np.exp(-(difference / report["after"]["temperature"] + report["after"]["intercept"]))), abs=1e-5)
    card = ModelCard.load(output / "README.md").text
    assert "The calibration is Platt's" in card and report["films_sha256"][:12] in card
    assert "## Calibrated on a site's films" in card and f"| refit, on the same films (optimistic) | {report['after']['temperature']:.3f} | {report['after']['threshold']:.3f} |" in card
    assert calibrate.main(["--model", str(DEFAULT_MODEL_DIR), "--data_dir", str(films), "--output_dir", str(output)]) == 1  # not over a folder


def dicom_of(film: Path) -> bytes:
    """An example film as a PACS exports it: a DICOM file with its preamble."""
    from conftest import make_dicom
    from PIL import Image

    return make_dicom(np.asarray(Image.open(film).convert("L")))


def dicomdir() -> bytes:
    """A DICOMDIR media index as a PACS export or a CD carries beside the films: DICOM, but no picture."""
    import io

    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    index = Dataset()
    index.file_meta = meta
    index.FileSetID = "EXPORT"
    buffer = io.BytesIO()
    index.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def layouts() -> dict[str, dict[str, bytes]]:
    """Archives as computers make them, each holding the eight example films (4 NORMAL, 4 PNEUMONIA) and what else
    their tools add."""
    films = find_examples()[0]
    names = {film: f"{film.parent.name}/{film.name}" for film in films}
    mac = {f"Films/{name}": film.read_bytes() for film, name in names.items()}
    mac |= {f"__MACOSX/Films/{Path(name).parent}/._{film.name}": b"\x00\x05\x16\x07resource fork" for film, name in names.items()}
    mac |= {"Films/.DS_Store": b"\x00\x00\x00\x01Bud1", "Films/NORMAL/.DS_Store": b"Bud1"}
    windows = {f"Export\\{film.parent.name.capitalize()}\\{film.name.upper().replace('.JPEG', '.JPG')}": film.read_bytes() for film in films}
    windows |= {"Export\\Normal\\Thumbs.db": b"\xd0\xcf\x11\xe0thumbnail cache", "Export\\desktop.ini": b"[.ShellClassInfo]\r\n"}
    rows = "".join(f"images\\{film.name};{film.parent.name.lower()}\r\n" for film in films)
    spreadsheet = {f"images/{film.name}": film.read_bytes() for film in films}
    spreadsheet["Labels.CSV"] = "\ufeffFile;Label\r\n".encode() + rows.encode() + b";\r\n"
    pacs = {f"EXPORT/{film.parent.name}/1.2.826.0.1.3680043.8.498.{index}{'' if index % 2 else '.1'}": dicom_of(film) for index, film in enumerate(films)}
    pacs |= {"EXPORT/DICOMDIR": dicomdir(), "EXPORT/NORMAL/README.TXT": b"exported by the PACS"}
    return {"mac": mac, "windows": windows, "spreadsheet": spreadsheet, "pacs": pacs}


@pytest.mark.parametrize("layout", ["mac", "windows", "spreadsheet", "pacs"])
def test_archives_as_computers_make_them_count_the_films_and_ignore_the_rest(tmp_path, layout):
    archive = make_zip(tmp_path / f"{layout}.zip", layouts()[layout])
    summary, records = check_archive(load_predictor(), archive, tmp_path / "work", tmp_path / "films.csv")
    assert summary["n"] == 8 and summary["errors"] == [] and summary["notes"] == [], summary
    assert sorted(record.truth for record in records) == [0] * 4 + [1] * 4
    assert sorted(row["label"] for row in csv.DictReader((tmp_path / "films.csv").open())) == ["NORMAL"] * 4 + ["PNEUMONIA"] * 4
    assert summary["roc_auc"] is not None and summary["sensitivity"] is not None


def test_the_batch_command_reads_the_same_folders_the_same_way(tmp_path):
    from pneumo_hf.batch import collect_inputs

    for layout in ("mac", "pacs"):
        safe_extract(make_zip(tmp_path / f"{layout}.zip", layouts()[layout]), tmp_path / layout)
        films = collect_inputs([str(tmp_path / layout)])
        assert len(films) == 8 and not any("__MACOSX" in film.key or "DICOMDIR" in film.key or "README" in film.key for film in films), [film.key for film in films]


def test_an_archive_of_one_label_says_what_it_cannot_measure_and_what_it_does(tmp_path):
    normals = {f"NORMAL/{film.name}": film.read_bytes() for film in find_examples()[0] if film.parent.name == "NORMAL"}
    summary, _ = check_archive(load_predictor(), make_zip(tmp_path / "normal.zip", {**normals, "NORMAL/broken.jpeg": b"torn"}), tmp_path / "work", tmp_path / "n.csv")
    assert summary["n"] == 4 and summary["roc_auc"] is None and summary["sensitivity"] is None and summary["specificity"] is not None
    assert summary["notes"] == [
        "All 4 readable films are NORMAL: with no PNEUMONIA film, ROC-AUC and sensitivity cannot be measured; accuracy, specificity and ECE are.",
        "1 film could not be read and is not counted; see errors.",
    ]
    summary, _ = check_archive(load_predictor(), make_zip(tmp_path / "torn.zip", {"PNEUMONIA/a.jpeg": b"torn", "NORMAL/b.png": b"torn"}), tmp_path / "work", tmp_path / "t.csv")
    assert summary["n"] == 0 and summary["notes"] == ["None of the 2 films could be read, so nothing is measured; the errors say why for each."]
