"""Data loading through datasets, the patient-grouped split, class weights and the shared transform."""

import datasets
import numpy as np
import pytest
import torch
from conftest import REAL_DATA, write_image_folder
from PIL import Image

from pneumo_hf.data import DataError, class_weights, load_evaluation_set, load_splits, patient_id
from pneumo_hf.labels import LABELS
from pneumo_hf.transforms import build_transform


@pytest.mark.parametrize(
    "name, patient",
    [
        ("person1003_bacteria_2934.jpeg", "person1003"),
        ("person12_virus_44.jpeg", "person12"),
        ("IM-0117-0001.jpeg", "IM-0117"),
        ("NORMAL2-IM-0117-0001.jpeg", "NORMAL2-IM-0117"),
        ("some/dir/scan.png", "scan.png"),
    ],
)
def test_patient_id_from_file_name(name, patient):
    assert patient_id(name) == patient


def test_image_folder_split_is_grouped_stratified_and_deterministic(image_folder):
    train, validation = load_splits(train_dir=str(image_folder), validation_fraction=0.25, seed=3)
    assert set(train["patient"]).isdisjoint(validation["patient"])
    assert len(train) + len(validation) == 24
    assert sorted(set(validation["label"])) == [0, 1]
    again = load_splits(train_dir=str(image_folder), validation_fraction=0.25, seed=3)[1]
    assert validation["patient"] == again["patient"]


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="needs ../shared/data")
def test_real_data_split_keeps_patients_apart_and_weights_match_design():
    train, validation = load_splits(train_dir=str(REAL_DATA), seed=42)
    assert len(train) + len(validation) == 5216
    assert set(train["patient"]).isdisjoint(validation["patient"])
    share = np.mean(validation["label"])
    assert abs(share - 3875 / 5216) < 0.03  # stratified
    weights = class_weights(list(train["label"]) + list(validation["label"]))
    assert weights.tolist() == pytest.approx([1.945, 0.673], abs=1e-3)


def test_class_weights_balance_the_classes():
    weights = class_weights([0] * 10 + [1] * 30)
    assert weights.tolist() == pytest.approx([2.0, 2 / 3])
    with pytest.raises(DataError, match="no images of"):
        class_weights([1, 1, 1])


def test_hub_parquet_layout_reads_through_dataset_name(tmp_path, image_folder):
    """A local folder laid out like the Hub repo (data/train-*.parquet, image + ClassLabel) loads by name."""
    rows = {"image": [], "label": []}
    for label_id, label in enumerate(LABELS):
        for path in sorted((image_folder / label).iterdir()):
            rows["image"].append(str(path))
            rows["label"].append(label_id)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(LABELS))})
    repo = tmp_path / "chest-xray-pneumonia"
    (repo / "data").mkdir(parents=True)
    table = datasets.Dataset.from_dict(rows, features=features)
    table.to_parquet(str(repo / "data" / "train-00000-of-00001.parquet"))
    table.select(range(4)).to_parquet(str(repo / "data" / "test-00000-of-00001.parquet"))
    train, validation = load_splits(dataset_name=str(repo), validation_fraction=0.25, seed=0)
    assert len(train) + len(validation) == 24
    assert set(train["patient"]).isdisjoint(validation["patient"])
    assert len(load_evaluation_set(dataset_name=str(repo), split="test")) == 4


@pytest.mark.parametrize("make, message", [
    (lambda root: root / "missing", "no such folder"),
    (lambda root: (root / "cats").mkdir() or root, "must hold the subfolders"),
])
def test_bad_folders_name_the_fix(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        load_splits(train_dir=str(make(tmp_path)))


def test_empty_class_folders_are_refused(tmp_path):
    for label in LABELS:
        (tmp_path / label).mkdir()
    with pytest.raises(DataError, match="`train_dir` .* holds no readable image files"):
        load_splits(train_dir=str(tmp_path))


def test_split_needs_both_classes(tmp_path):
    write_image_folder(tmp_path / "one", per_class=2)
    with pytest.raises(DataError, match="Too few"):
        load_splits(train_dir=str(tmp_path / "one"), validation_fraction=0.25)


def test_transform_makes_model_input_from_any_size():
    config = {"input_size": (3, 32, 40), "mean": (0.5,) * 3, "std": (0.25,) * 3, "interpolation": "bicubic"}
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 170, 3), dtype=np.uint8))
    for train in (False, True):
        tensor = build_transform(config, train=train)(image)
        assert tensor.shape == (3, 32, 40) and tensor.dtype == torch.float32
        assert torch.equal(tensor[0], tensor[1]) and torch.equal(tensor[1], tensor[2])  # grey, 3 channels
    flat = build_transform(config)(Image.new("RGB", (50, 50), (128, 128, 128)))
    assert torch.allclose(flat, torch.full_like(flat, (128 / 255 - 0.5) / 0.25), atol=0.02)  # one grey level


def test_evaluation_augmentation_is_deterministic():
    config = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8))
    assert torch.equal(build_transform(config)(image), build_transform(config)(image))
    augmented = build_transform(config, train=True, aug_strength=2.0)
    assert not torch.equal(augmented(image), augmented(image))


def test_random_erasing_fills_a_rectangle_with_noise_only_in_training():
    config = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    flat = Image.new("L", (64, 64), 128)
    grey = (128 / 255 - 0.5) / 0.5
    erased = build_transform(config, train=True, aug_strength=0.0, random_erasing=1.0)(flat)
    changed = (erased - grey).abs() > 0.02
    assert 0 < changed[0].sum() < 32 * 32  # part of the image, not all of it
    rows, columns = changed[0].nonzero(as_tuple=True)
    assert changed[0][rows.min() : rows.max() + 1, columns.min() : columns.max() + 1].float().mean() > 0.9  # one rectangle
    evaluated = build_transform(config, random_erasing=1.0)(flat)
    assert torch.allclose(evaluated, torch.full_like(evaluated, grey), atol=0.02)


def test_intensity_augmentation_changes_exposure_only_in_training():
    config = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    image = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1)))  # a grey ramp
    torch.manual_seed(0)
    augmented = build_transform(config, train=True, aug_strength=0.0, intensity_aug=1.0)
    plain = build_transform(config)(image)
    differences = [(augmented(image) - plain).abs().max().item() for _ in range(20)]
    assert sum(d > 0.02 for d in differences) >= 10  # gamma, blur or noise in most draws
    assert all(torch.equal(build_transform(config, intensity_aug=1.0)(image), plain) for _ in range(3))
