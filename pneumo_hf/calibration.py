"""Calibrate a model folder for a site: refit its temperature and threshold on the site's labelled films, and say by a
patient-grouped cross-fit what the refit is worth on films it did not see. The weights are not touched.

    pneumo-hf calibrate --model pneumo_hf/default_model --data_dir our_films/ --min_sensitivity 0.95 --output_dir runs/ours
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from accelerate import Accelerator

from . import metrics
from .data import DataError, load_evaluation_set, patient_halves
from .errors import ArgumentError
from .evaluation import evaluate, fit_calibration, split_loader
from .folder import CALIBRATION, SUMMARY, ModelFolder
from .hub import readable_split, write_model_card
from .models import PneumoniaClassifier, resolve_model_folder

logger = logging.getLogger(__name__)

__all__ = ["calibrate_folder", "crossfit"]

FIGURES = ("accuracy", "recall", "specificity", "ece")


def crossfit(logits: np.ndarray, labels: np.ndarray, patients: np.ndarray, min_sensitivity: float, stored: tuple[float, float], repeats: int = 10) -> dict[str, dict[str, float]]:
    """Mean figures on held-out halves (patient-grouped, class-stratified; `repeats` splits, both ways round): the
    `stored` (temperature, threshold) and the refit on the other half, each measured on the same half."""
    found: dict[str, list[dict]] = {"stored": [], "refit": []}
    for fit, held in patient_halves(labels, patients, repeats):
        for name, (temperature, threshold) in (("stored", stored), ("refit", fit_calibration(logits[fit], labels[fit], min_sensitivity))):
            found[name].append(metrics.classification_metrics(labels[held], metrics.probabilities(logits[held], temperature)[:, 1], threshold))
    return {name: {**{key: float(np.mean([row[key] for row in rows])) for key in FIGURES}, "lowest_recall": float(min(row["recall"] for row in rows)), "halves": len(rows)} for name, rows in found.items()}


def calibrate_folder(model: str, data_dir: str, min_sensitivity: float, output_dir: str, repeats: int = 10) -> dict[str, Any]:
    """Score `data_dir` as `pneumo-hf evaluate` does, refit temperature and threshold, and write `output_dir`: a copy of
    the model folder (byte-identical weights) with the new temperature and threshold in config.json, calibration.json
    (figures before and after, the cross-fit) and the card rewritten to say so. Returns calibration.json's content."""
    if not 0.5 <= min_sensitivity <= 1.0:
        raise ArgumentError(f"--min_sensitivity {min_sensitivity}: give a value between 0.5 and 1, e.g. 0.95.")
    output = ModelFolder(output_dir)
    if output.path.exists() and any(output.path.iterdir()):
        raise ArgumentError(f"--output_dir {output.path} is not empty; choose a new folder, the calibrated copy goes there whole.")
    folder = resolve_model_folder(model)
    classifier = PneumoniaClassifier.from_pretrained(folder).eval()
    films = load_evaluation_set(data_dir=data_dir)
    labels_present = set(films["label"])
    if labels_present != {0, 1}:
        raise DataError(f"{data_dir} holds films of one label only; calibration needs NORMAL and PNEUMONIA films.")
    logits, labels = evaluate(classifier, split_loader(classifier, films), Accelerator(), classifier.test_time_views)
    stored = (classifier.temperature, classifier.threshold)
    temperature, threshold = fit_calibration(logits, labels, min_sensitivity)
    before = metrics.classification_metrics(labels, metrics.probabilities(logits, stored[0])[:, 1], stored[1])
    after = metrics.classification_metrics(labels, metrics.probabilities(logits, temperature)[:, 1], threshold)
    report = {
        "data": readable_split(str(data_dir)),
        "films": int(len(labels)),
        "min_sensitivity": min_sensitivity,
        "before": {"temperature": stored[0], "threshold": stored[1], **{key: before[key] for key in (*FIGURES, "roc_auc")}},
        "after": {"temperature": temperature, "threshold": threshold, **{key: after[key] for key in (*FIGURES, "roc_auc")}},
        "crossfit": crossfit(logits, labels, np.asarray(films["patient"]), min_sensitivity, stored, repeats),
    }
    ModelFolder(folder).copy_to(output)
    output.set_calibration(temperature, threshold)
    output.write(CALIBRATION, report)
    if output.read(SUMMARY) is not None:
        write_model_card(output.path)
    else:
        logger.warning("%s has no training_summary.json: its card is left as it was.", folder)
    return report
