"""What tiny seeded runs write, pinned: the file list of each model folder and every value in it that is not a time or
a temporary path (training, an ensemble of two runs, a site calibration). Written before the model folder got one
owner (issue 31), so that the move provably changed nothing. After a deliberate change of what a folder holds:

    PNEUMO_PIN_UPDATE=1 pytest tests/test_folder_pinned.py     # rewrites tests/pinned/model_folders.json; review the diff
"""

import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path

import pytest

from pneumo_hf.calibration import calibrate_folder
from pneumo_hf.training import TrainingArguments, train

ROOT = Path(__file__).resolve().parents[1]
PINNED = Path(__file__).with_name("pinned") / "model_folders.json"
TIMES = ("train_seconds",)


def run_ensemble(*argv: str) -> int:
    spec = importlib.util.spec_from_file_location("ensemble_script", ROOT / "train" / "ensemble.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(list(argv))


def masked(text: str, root: Path) -> str:
    """`text` without the temporary folders' path and the measured train time."""
    text = text.replace(str(root), "<tmp>")
    return re.sub(r"train time \d+ s", "train time <s> s", text)


def json_without_times(path: Path, root: Path):
    found = json.loads(masked(path.read_text(), root))
    return {key: value for key, value in found.items() if key not in TIMES} if isinstance(found, dict) else found


def fingerprint(folder: Path, root: Path) -> dict:
    """Every file's name; JSON files by content (times left out), weights by SHA-256, the card as text; plots by name."""
    found = {"files": sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".json":
            found[path.name] = json_without_times(path, root)
        elif path.suffix == ".safetensors":
            found[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.name == "README.md":
            found[path.name] = masked(path.read_text(), root)
    return found


@pytest.fixture(scope="module")
def written(tmp_path_factory, image_folder) -> dict:
    root = tmp_path_factory.mktemp("pinned")
    common = dict(train_dir=str(image_folder), validation_fraction=0.25, split_seed=3, per_device_train_batch_size=8, dataloader_num_workers=0, test_dev_dir=str(image_folder))
    train(TrainingArguments(output_dir=str(root / "resnet"), model_name_or_path="resnet18", image_size=32, num_train_epochs=2, seed=5, save_fp16=True, fp16_tolerance=1.0, **common), command="pytest")
    train(TrainingArguments(output_dir=str(root / "keras"), model_name_or_path="keras_cnn", image_size=40, num_train_epochs=1, seed=6, test_time_views=["hflip"], **common), command="pytest")
    assert run_ensemble(str(root / "resnet"), str(root / "keras"), "--output_dir", str(root / "ensemble"), "--test_dev_dir", str(image_folder), "--save_fp16", "--fp16_tolerance", "1.0") == 0
    calibrate_folder(str(root / "resnet"), str(image_folder), 0.9, str(root / "calibrated"), repeats=2)
    return {name: fingerprint(root / name, tmp_path_factory.getbasetemp()) for name in ("resnet", "keras", "ensemble", "calibrated")}


def test_tiny_runs_write_the_pinned_model_folders(written):
    if os.environ.get("PNEUMO_PIN_UPDATE"):
        PINNED.parent.mkdir(exist_ok=True)
        PINNED.write_text(json.dumps(written, indent=1, sort_keys=True) + "\n")
    pinned = json.loads(PINNED.read_text())
    for name, folder in pinned.items():
        for key, value in folder.items():
            assert written[name].get(key) == value, f"{name}/{key} differs from tests/pinned/model_folders.json"
        assert sorted(written[name]) == sorted(folder), f"{name}: other files than pinned"
