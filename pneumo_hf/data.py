"""Data: a Hub data set (or a local copy of one) or an image folder → undecoded `datasets.Dataset`s,
a patient-grouped stratified validation split, class weights, and the rows as films for a DataLoader
(`pneumo_hf.films.FilmDataset`; the one transform builder is `pneumo_hf.transforms`).

    from pneumo_hf.data import load_splits
    train, validation = load_splits(train_dir="../shared/data/chest_xray_224/train", seed=42)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import datasets
import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold

from .errors import UserError
from .films import Film, FilmDataset
from .hub import hub_reachable
from .labels import LABELS

logger = logging.getLogger(__name__)

__all__ = [
    "DataError",
    "patient_id",
    "load_splits",
    "load_evaluation_set",
    "split_by_patient",
    "class_weights",
    "collate",
    "dataset_films",
    "skipping_unreadable",
]

_PATIENT_PATTERNS = (
    re.compile(r"(person\d+)_"),  # personN_bacteria_M.jpeg
    re.compile(r"((?:NORMAL2-)?IM-\d{4})-"),  # IM-XXXX-YYYY.jpeg, NORMAL2-IM-XXXX-YYYY.jpeg
)


class DataError(UserError, ValueError):
    """A data set that cannot be used; the message names the parameter (as `name`) or folder to fix."""


def patient_id(filename: str) -> str:
    """The patient a Kermany file name belongs to (`person12_virus_3.jpeg` → `person12`); other names are their own group."""
    name = Path(filename).name
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(name)
        if match:
            return match.group(1)
    return name


def load_splits(
    dataset_name: Optional[str] = None,
    train_dir: Optional[str] = None,
    validation_dir: Optional[str] = None,
    validation_fraction: float = 0.15,
    seed: int = 42,
    max_samples: Optional[int] = None,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Train and validation splits with columns `image` (undecoded), `label` and `patient`.

    Validation comes from `validation_dir` when given, else it is carved from train by patient."""
    if dataset_name:
        train = _load_hub_dataset(dataset_name)
    elif train_dir:
        train = _load_image_folder(train_dir, "`train_dir`")
    else:
        raise DataError("No data given: pass `dataset_name` (a Hub id or a local copy) or `train_dir` (an image folder).")
    if max_samples:
        train = train.shuffle(seed=seed).select(range(min(max_samples, len(train))))
    if validation_dir:
        return train, _load_image_folder(validation_dir, "`validation_dir`")
    return split_by_patient(train, validation_fraction, seed)


def load_evaluation_set(dataset_name: Optional[str] = None, split: str = "test", data_dir: Optional[str] = None) -> datasets.Dataset:
    """A labelled split to measure a model on: `split` of a Hub data set (or local copy), or an image folder."""
    if data_dir:
        return _load_image_folder(data_dir, "`data_dir`")
    if dataset_name:
        return _load_hub_dataset(dataset_name, split)
    raise DataError("Pass `dataset_name` (with `split`), or `data_dir`.")


def _load_hub_dataset(name: str, split: str = "train") -> datasets.Dataset:
    if not Path(name).exists() and not hub_reachable():
        raise DataError(f"`dataset_name` {name}: not a local folder, and the Hub is not reachable; pass a local copy of the data set repo or `train_dir`.")
    try:
        loaded = datasets.load_dataset(name, split=split)
    except ValueError as error:  # an unknown split
        raise DataError(f"Data set {name!r} has no split {split!r} ({error}).") from error
    except FileNotFoundError as error:
        raise DataError(f"Data set {name!r} not found ({error}); pass a Hub id, a local copy of a Hub data set repo, or use `train_dir`.") from error
    except (ConnectionError, OSError) as error:
        raise DataError(f"Could not reach the Hub for data set {name!r} ({type(error).__name__}); use a local copy as `dataset_name` or `train_dir`.") from error
    missing = {"image", "label"} - set(loaded.column_names)
    if missing:
        raise DataError(f"Data set {name!r} lacks the column(s) {sorted(missing)}; it needs `image` and `label`.")
    _check_label_names(loaded, f"`dataset_name` {name}")
    return _with_patients(loaded)


def _load_image_folder(folder: str, parameter: str) -> datasets.Dataset:
    path = Path(folder)
    if not path.is_dir():
        raise DataError(f"{parameter} {folder}: no such folder; give a folder with NORMAL/ and PNEUMONIA/ subfolders.")
    found = sorted(p.name for p in path.iterdir() if p.is_dir())
    if [name for name in found if name in LABELS] != list(LABELS):
        raise DataError(f"{parameter} {folder} must hold the subfolders {list(LABELS)}; it holds {found or 'none'}.")
    try:
        loaded = datasets.load_dataset("imagefolder", data_dir=str(path), split="train")
    except (FileNotFoundError, ValueError) as error:
        raise DataError(f"{parameter} {folder} holds no readable image files ({error}).") from error
    if len(loaded) == 0:
        raise DataError(f"{parameter} {folder} holds no image files.")
    _check_label_names(loaded, f"{parameter} {folder}")
    return _with_patients(loaded)


def _check_label_names(dataset: datasets.Dataset, source: str) -> None:
    names = tuple(dataset.features["label"].names)
    if names != LABELS:
        raise DataError(f"{source} has labels {names}; this project needs exactly {LABELS}.")


def _with_patients(dataset: datasets.Dataset) -> datasets.Dataset:
    dataset = dataset.cast_column("image", datasets.Image(decode=False))
    patients = [patient_id(image["path"] or f"row{i}") for i, image in enumerate(dataset["image"])]
    return dataset.add_column("patient", patients)


def split_by_patient(dataset: datasets.Dataset, validation_fraction: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """A stratified split with every patient on one side only, the same for the same `seed`."""
    if not 0.0 < validation_fraction < 0.5:
        raise DataError(f"`validation_fraction` {validation_fraction} must lie between 0 and 0.5.")
    n_splits = max(2, round(1.0 / validation_fraction))
    labels = np.asarray(dataset["label"])
    if np.bincount(labels, minlength=len(LABELS)).min() < n_splits:
        raise DataError(f"Too few images of one class ({np.bincount(labels, minlength=len(LABELS)).tolist()}) to carve a validation split; add data or pass `validation_dir`.")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_index, validation_index = next(folds.split(np.zeros(len(labels)), labels, groups=dataset["patient"]))
    return dataset.select(train_index), dataset.select(validation_index)


def patient_halves(labels: Sequence[int], patients: Sequence[str], repeats: int = 10, seed: int = 0):
    """(fit, held-out) index pairs: `repeats` random class-stratified halvings by patient, each half held out once.
    The cross-fits of `pneumo-hf calibrate` and `pneumo-hf fit-domain-check`."""
    labels, patients = np.asarray(labels), np.asarray(patients)
    for repeat in range(repeats):
        yield from StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=seed + repeat).split(labels, labels, patients)


def class_weights(labels: Sequence[int]) -> torch.Tensor:
    """Weights n / (K · n_c), so that each class carries the same total weight in the loss (scikit-learn's "balanced")."""
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels)
    missing = [name for i, name in enumerate(LABELS) if not (labels == i).any()]
    if missing:
        raise DataError(f"The training split has no images of {missing}.")
    return torch.tensor(compute_class_weight("balanced", classes=np.arange(len(LABELS)), y=labels), dtype=torch.float32)


def dataset_films(dataset: datasets.Dataset) -> list[Film]:
    """The rows of an undecoded `datasets.Dataset` as films, read row by row when a worker needs them."""
    return [Film(f"row {index}", dataset=dataset, index=index) for index in range(len(dataset))]


def skipping_unreadable(dataset: datasets.Dataset, transform: Callable) -> FilmDataset:
    """The rows of an undecoded `datasets.Dataset` (columns `image`, `label`) decoded through `transform`; `collate`
    leaves out, counts and logs the films that cannot be read."""
    return FilmDataset(dataset_films(dataset), transform, labels=dataset["label"])


def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the readable rows; `n_skipped` counts the unreadable ones so the loop can report them."""
    for row in rows:
        if "error" in row:
            logger.warning("Skipping unreadable image %s: %s", row["source"], row["error"])
    kept = [row for row in rows if "error" not in row]
    if not kept:
        return {"pixel_values": torch.empty(0), "labels": torch.empty(0, dtype=torch.long), "n_skipped": len(rows)}
    return {
        "pixel_values": torch.stack([row["pixel_values"] for row in kept]),
        "labels": torch.tensor([row["labels"] for row in kept], dtype=torch.long),
        "n_skipped": len(rows) - len(kept),
    }
