"""`pneumo-hf predict`: every input one row, bad films as rows with their error, resume after a kill, shards over
Accelerate processes; the package installs with its model and imports without the training stack."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dicom, xray_like
from PIL import Image

from pneumo_hf import load_predictor
from pneumo_hf.batch import COLUMNS, collect_inputs
from pneumo_hf.examples import find_examples

ROOT = Path(__file__).resolve().parents[1]


def predict(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pneumo_hf", "predict", *args], capture_output=True, text=True, timeout=timeout)


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture
def archive(tmp_path, image_folder) -> Path:
    """Films in nested folders, a DICOM without a suffix, and one broken file."""
    root = tmp_path / "archive"
    (root / "ward" / "2024").mkdir(parents=True)
    for path in sorted(image_folder.rglob("*.jpeg"))[::3]:
        (root / "ward" / path.name).write_bytes(path.read_bytes())
    (root / "ward" / "2024" / "IM00017").write_bytes(make_dicom(xray_like(17, (60, 50))))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def test_folder_with_a_broken_file_finishes_with_its_error_in_its_row(archive, trained_folder, tmp_path):
    output = tmp_path / "preds.csv"
    result = predict(str(archive), "--output", str(output), "--model", str(trained_folder), "--num_workers", "1", "--batch_size", "3")
    assert result.returncode == 0, result.stderr
    rows = rows_of(output)
    films = [path for path in archive.rglob("*") if path.is_file()]
    assert sorted(row["path"] for row in rows) == sorted(map(str, films)) and list(rows[0]) == COLUMNS
    broken = next(row for row in rows if row["path"].endswith("broken.png"))
    assert broken["error"] and not broken["decision"]
    assert "1 with an error" in result.stdout
    predictor = load_predictor(trained_folder)
    for row in rows:
        if not row["error"]:
            expected = predictor.predict(row["path"]).probabilities["PNEUMONIA"]
            assert float(row["probability_PNEUMONIA"]) == pytest.approx(expected, abs=1e-5)
            assert row["decision"] == predictor.decide(float(row["probability_PNEUMONIA"]))
    assert not list(tmp_path.glob("preds.csv.part-*"))


def test_lists_of_paths_parquet_output_and_heatmaps(archive, trained_folder, tmp_path):
    films = sorted(str(path) for path in archive.rglob("*.jpeg"))
    (tmp_path / "list.csv").write_text("path,note\n" + "".join(f"{path},x\n" for path in films[:3]))
    (tmp_path / "list.txt").write_text("\n".join(films[2:5]) + "\n")
    output = tmp_path / "preds.parquet"
    result = predict(str(tmp_path / "list.csv"), str(tmp_path / "list.txt"), "--output", str(output), "--model", str(trained_folder), "--heatmaps", str(tmp_path / "maps"), "--num_workers", "0")
    assert result.returncode == 0, result.stderr
    import pandas as pd

    table = pd.read_parquet(output)
    assert list(table["path"]) == films[:5]  # in input order, the film listed twice once
    assert table["probability_PNEUMONIA"].dtype == np.float64
    assert len(list((tmp_path / "maps").glob("*.jpg"))) == 5


def test_a_local_copy_of_a_hub_data_set_is_an_input(tmp_path, image_folder):
    import datasets

    from pneumo_hf.labels import LABELS

    paths = sorted(str(path) for path in image_folder.rglob("*.jpeg"))[:5]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(LABELS))})
    (tmp_path / "repo" / "data").mkdir(parents=True)
    datasets.Dataset.from_dict({"image": paths, "label": [0] * 5}, features=features).to_parquet(str(tmp_path / "repo" / "data" / "test-00000-of-00001.parquet"))
    films = collect_inputs([str(tmp_path / "repo")], split="test")
    assert [film.key for film in films] == [f"{tmp_path / 'repo'}:test/{i}" for i in range(5)]
    first = load_predictor().predict(films[0].read()).probabilities
    assert first == load_predictor().predict(paths[0]).probabilities


def test_a_row_cut_by_a_kill_is_dropped_and_the_next_rows_start_on_their_own_line(tmp_path):
    from pneumo_hf.batch import CsvSink
    from pneumo_hf.films import Film
    from pneumo_hf.records import FilmRecord

    output = tmp_path / "preds.csv"
    films = [Film(name, name) for name in ("a.png", "b.png", "c.png")]
    part = tmp_path / "preds.csv.part-0.csv"
    part.write_text(",".join(COLUMNS) + "\n" + "a.png,,,,,,unreadable\n" + "b.png,PNEU")  # killed while writing b's row
    sink = CsvSink(output)
    assert sink.pending(films) == {"b.png", "c.png"}
    sink.write([FilmRecord("b.png", error="unreadable"), FilmRecord("c.png", error="unreadable")])
    sink.close()
    assert [(row["path"], row["error"]) for row in rows_of(output)] == [("a.png", "unreadable"), ("b.png", "unreadable"), ("c.png", "unreadable")]


def test_killed_run_resumes_and_writes_each_film_once(tmp_path, trained_folder):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(400):
        Image.fromarray(xray_like(i, (40, 36), pneumonia=i % 2 == 0)).save(folder / f"film{i:03d}.png")
    output = tmp_path / "preds.csv"
    command = [sys.executable, "-m", "pneumo_hf", "predict", str(folder), "--output", str(output), "--model", str(trained_folder), "--batch_size", "2", "--num_workers", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    part = tmp_path / "preds.csv.part-0.csv"
    deadline = time.time() + 120
    while time.time() < deadline and (not part.is_file() or part.read_text().count("\n") < 6):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = {row["path"]: row for row in rows_of(part) if row.get("error") is not None}
    assert 5 <= len(before) < 400 and not output.exists()  # stopped part-way
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = rows_of(output)
    assert sorted(row["path"] for row in rows) == sorted(str(path) for path in folder.iterdir())
    assert all(rows_by == before[rows_by["path"]] for rows_by in rows if rows_by["path"] in before)
    assert f"{len(before)} already done" in result.stdout


def test_two_accelerate_processes_shard_the_inputs_each_once(archive, trained_folder, tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    output = tmp_path / "preds.csv"
    command = [
        str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "pneumo_hf", "predict", str(archive), "--output", str(output), "--model", str(trained_folder), "--num_workers", "0", "--batch_size", "2",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    rows = rows_of(output)
    assert sorted(row["path"] for row in rows) == sorted(str(path) for path in archive.rglob("*") if path.is_file())
    assert result.stdout.count("films:") == 1  # one summary, from the main process


def test_prediction_does_not_import_the_training_stack():
    code = "import sys, pneumo_hf; pneumo_hf.load_predictor(); print(sorted(m for m in ('datasets', 'sklearn', 'gradio', 'accelerate') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr


@pytest.mark.slow
def test_the_wheel_holds_the_default_model_and_example_films(tmp_path):
    source = tmp_path / "source"  # a copy, so that no earlier build/ folder leaks stale files into the wheel
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__", "runs"))
    result = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path), str(source)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    names = zipfile.ZipFile(next(tmp_path.glob("pneumo_hf-*.whl"))).namelist()
    assert {"pneumo_hf/default_model/model.safetensors", "pneumo_hf/default_model/config.json", "pneumo_hf/default_model/README.md"} <= set(names)
    assert len([name for name in names if name.startswith("pneumo_hf/example_films/") and name.endswith(".jpeg")]) == len(find_examples()[0]) == 8
    assert {"pneumo_hf/default_model/domain_check.json", "pneumo_hf/default_model/training_summary.json", "pneumo_hf/default_model/test_dev_roc_curve.png"} <= set(names)
    assert any(name.endswith("entry_points.txt") for name in names)


def test_unknown_input_and_bad_output_name_are_one_line_errors(tmp_path):
    missing = predict(str(tmp_path / "nowhere"), "--output", str(tmp_path / "x.csv"))
    assert missing.returncode == 1 and "no such file or folder" in missing.stderr
    wrong = predict(str(tmp_path), "--output", str(tmp_path / "x.xlsx"))
    assert wrong.returncode == 2 and "name a .csv or a .parquet file" in wrong.stderr
