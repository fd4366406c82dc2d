"""What tiny seeded runs write, pinned: the file list of each model folder and every value in it that is not a time or
a temporary path (training, an ensemble of two runs, a site calibration). Written before the model folder got one
owner (issue 31), so that the move provably changed nothing. After a deliberate change of what a folder holds:

    PNEUMO_PIN_UPDATE=1 pytest tests/test_folder_pinned.py     # rewrites tests/pinned/model_folders.json; review the diff

Which pin holds where, and why (docs/training.md): the weights' SHA-256 are exact only under torch's kernel caps
(`pneumo_hf.reproduce.KERNEL_CAPS`), so the tiny runs train in a child process that has them, and no other test
needs them. What numpy and scikit-learn compute (the domain check: its cut in JSON, its tensors), whose OpenBLAS picks
its kernels per CPU, is compared within a tolerance rather than under a cap (a tolerance holds on CPUs nobody here
has, a cap only on the ones it names): JSON floats within `FLOAT_RTOL` (1e-9 relative), the domain check's tensors by
their norms within one step of float32 (`first_digest_difference`).
"""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pneumo_hf.reproduce import KERNEL_CAPS, TIMES, first_difference, first_digest_difference, tensor_digest

ROOT = Path(__file__).resolve().parents[1]
PINNED = Path(__file__).with_name("pinned") / "model_folders.json"
FOLDERS = ("resnet", "keras", "ensemble", "calibrated")


def run_ensemble(*argv: str) -> int:
    from pneumo_hf.commands import ensemble

    return ensemble.main(list(argv), program="python train/ensemble.py")  # as the pinned card records it


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
        elif path.name == "domain_check.safetensors":  # numpy's and scikit-learn's floats
            found[path.name] = tensor_digest(path)
        elif path.suffix == ".safetensors":  # torch's, exact under the caps
            found[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.name == "README.md":
            found[path.name] = masked(path.read_text(), root)
    return found


def write_tiny_runs(root: Path, image_folder: Path) -> None:
    """The four folders the pins describe, under `root` (run in a child process with the kernel caps)."""
    import torch
    from conftest import tiny_run

    from pneumo_hf.calibration import calibrate_folder

    torch.set_num_threads(1)
    common = dict(split_seed=3, test_dev_dir=str(image_folder))
    tiny_run(root / "resnet", image_folder, seed=5, save_fp16=True, fp16_tolerance=1.0, **common)
    tiny_run(root / "keras", image_folder, model_name_or_path="keras_cnn", image_size=40, num_train_epochs=1, seed=6, test_time_views=["hflip"], **common)
    assert run_ensemble(str(root / "resnet"), str(root / "keras"), "--output_dir", str(root / "ensemble"), "--test_dev_dir", str(image_folder), "--save_fp16", "--fp16_tolerance", "1.0") == 0
    calibrate_folder(str(root / "resnet"), str(image_folder), 0.9, str(root / "calibrated"), repeats=2, method="temperature")  # a temperature-only folder, pinned as before Platt


@pytest.fixture(scope="module")
def written(tmp_path_factory, image_folder) -> dict:
    root = tmp_path_factory.mktemp("pinned")
    # The caps replace whatever kernels the caller's environment named (OPENBLAS_CORETYPE too: the floats it moves are
    # compared within a tolerance, so the pins hold whichever it is).
    caps = {name: value for name, value in KERNEL_CAPS.items() if name != "OPENBLAS_CORETYPE"}
    subprocess.run([sys.executable, __file__, str(root), str(image_folder)], env={**os.environ, **caps}, check=True, cwd=ROOT)
    return {name: fingerprint(root / name, tmp_path_factory.getbasetemp()) for name in FOLDERS}


def test_tiny_runs_write_the_pinned_model_folders(written):
    if os.environ.get("PNEUMO_PIN_UPDATE"):
        PINNED.parent.mkdir(exist_ok=True)
        PINNED.write_text(json.dumps(written, indent=1, sort_keys=True) + "\n")
    pinned = json.loads(PINNED.read_text())
    for name, folder in pinned.items():
        digests = {key for key, value in folder.items() if key.endswith(".safetensors") and isinstance(value, dict)}
        difference = first_difference({key: value for key, value in written[name].items() if key not in digests}, {key: value for key, value in folder.items() if key not in digests}, name)
        for key in sorted(digests):
            difference = difference or first_digest_difference(written[name].get(key, {}), folder[key], f"{name}.{key}")
        assert difference is None, f"{difference} (tests/pinned/model_folders.json)"


def test_pins_compare_floats_within_the_stated_tolerance_and_all_else_exactly():
    pinned = {"cut": 41.76409272941746, "files": ["config.json"], "sha": "ab12", "n": 3}
    assert first_difference({**pinned, "cut": 41.76409272969687}, pinned) is None  # another CPU's OpenBLAS (issue 43)
    assert "cut" in first_difference({**pinned, "cut": 41.7641}, pinned)
    assert "sha" in first_difference({**pinned, "sha": "ab13"}, pinned)
    assert "files" in first_difference({**pinned, "files": ["model.safetensors"]}, pinned)
    assert "n" in first_difference({**pinned, "n": 4}, pinned)
    digest = {"precision": {"shape": [3], "dtype": "float32", "l1": 6.0, "l2_squared": 14.0}}
    assert first_digest_difference({"precision": {**digest["precision"], "l1": 6.0 * (1 + 2**-24)}}, digest) is None
    assert "l1" in first_digest_difference({"precision": {**digest["precision"], "l1": 6.001}}, digest)


if __name__ == "__main__":
    write_tiny_runs(Path(sys.argv[1]), Path(sys.argv[2]))
