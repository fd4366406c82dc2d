"""Calibrate a model folder for a site: refit its calibration (Platt's slope and intercept on the logit by default,
or the temperature alone) and threshold on the site's labelled films, and say by a patient-grouped cross-fit what the
refit is worth on films it did not see. The weights are not touched.

    pneumo-hf calibrate --model pneumo_hf/default_model --data_dir our_films/ --min_sensitivity 0.95 --output_dir runs/ours
    pneumo-hf calibrate ... --method temperature        # the temperature alone, as training fits it
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import Accelerator

from . import metrics
from .card import readable_split, write_model_card
from .data import DataError, load_evaluation_set, patient_halves
from .errors import ArgumentError
from .evaluation import predict_logits, split_loader
from .folder import CALIBRATION, SUMMARY, ModelFolder
from .models import PneumoniaClassifier, resolve_model_folder

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "calibrate_folder", "crossfit", "fit_site_calibration"]

FIGURES = ("accuracy", "sensitivity", "specificity", "ece", "ece_pneumonia")
METHODS = ("platt", "temperature")


def fit_site_calibration(logits: np.ndarray, labels: np.ndarray, min_sensitivity: float, method: str = "platt") -> tuple[float, float, float]:
    """(temperature, intercept, threshold) fitted on `logits`: Platt's slope (as 1 / temperature) and intercept, or the
    temperature alone (intercept 0); the threshold then keeps sensitivity ≥ `min_sensitivity` at the most specificity."""
    temperature, intercept = metrics.fit_platt(logits, labels) if method == "platt" else (metrics.fit_temperature(logits, labels), 0.0)
    threshold = metrics.choose_threshold(labels, metrics.probabilities(logits, temperature, intercept)[:, 1], min_sensitivity)
    return temperature, intercept, threshold


def figures_of(labels: np.ndarray, logits: np.ndarray, temperature: float, intercept: float, threshold: float) -> dict[str, float]:
    """The site's figures under one calibration: both ECEs (top label; 10 bins of P(PNEUMONIA))."""
    return metrics.site_figures(labels, metrics.probabilities(logits, temperature, intercept)[:, 1], threshold)


def crossfit(logits: np.ndarray, labels: np.ndarray, patients: np.ndarray, min_sensitivity: float, stored: tuple[float, float, float], repeats: int = 10, method: str = "platt") -> dict[str, dict[str, float]]:
    """Mean figures on held-out halves (patient-grouped, class-stratified; `repeats` splits, both ways round): the
    `stored` (temperature, intercept, threshold) and the refit on the other half, each measured on the same half."""
    found: dict[str, list[dict]] = {"stored": [], "refit": []}
    for fit, held in patient_halves(labels, patients, repeats):
        for name, calibration in (("stored", stored), ("refit", fit_site_calibration(logits[fit], labels[fit], min_sensitivity, method))):
            found[name].append(figures_of(labels[held], logits[held], *calibration))
    return {name: {**{key: float(np.mean([row[key] for row in rows])) for key in FIGURES}, "lowest_sensitivity": float(min(row["sensitivity"] for row in rows)), "halves": len(rows)} for name, rows in found.items()}


def films_sha256(films) -> str:
    """SHA-256 of the films' sorted names, each as LABEL_FOLDER/FILE: which films a calibration was fitted on, without
    this machine's paths."""
    import datasets

    paths = [image["path"] or "" for image in films.cast_column("image", datasets.Image(decode=False))["image"]]
    return hashlib.sha256("\n".join(sorted(f"{Path(path).parent.name}/{Path(path).name}" for path in paths)).encode()).hexdigest()


def calibrate_folder(model: str, data_dir: str, min_sensitivity: float, output_dir: str, repeats: int = 10, method: str = "platt") -> dict[str, Any]:
    """Score `data_dir` as `pneumo-hf evaluate` does, refit the calibration (`method`: "platt" or "temperature") and
    threshold, and write `output_dir`: a copy of the model folder (byte-identical weights) with them in config.json,
    calibration.json (figures before and after, the cross-fit, the films) and the card rewritten to say so. Returns
    calibration.json's content."""
    if not 0.5 <= min_sensitivity <= 1.0:
        raise ArgumentError(f"--min_sensitivity {min_sensitivity}: give a value between 0.5 and 1, e.g. 0.95.")
    if method not in METHODS:
        raise ArgumentError(f"--method {method}: give one of {', '.join(METHODS)}.")
    output = ModelFolder(output_dir)
    if output.path.exists() and any(output.path.iterdir()):
        raise ArgumentError(f"--output_dir {output.path} is not empty; choose a new folder, the calibrated copy goes there whole.")
    folder = resolve_model_folder(model)
    classifier = PneumoniaClassifier.from_pretrained(folder).eval()
    films = load_evaluation_set(data_dir=data_dir)
    labels_present = set(films["label"])
    if labels_present != {0, 1}:
        raise DataError(f"{data_dir} holds films of one label only; calibration needs NORMAL and PNEUMONIA films.")
    logits, labels = predict_logits(classifier, split_loader(classifier, films), Accelerator(), classifier.test_time_views)
    stored = (classifier.temperature, classifier.intercept, classifier.threshold)
    temperature, intercept, threshold = fit_site_calibration(logits, labels, min_sensitivity, method)
    before, after = figures_of(labels, logits, *stored), figures_of(labels, logits, temperature, intercept, threshold)
    report = {
        "data": readable_split(str(data_dir)),
        "films": int(len(labels)),
        "films_sha256": films_sha256(films),
        "method": method,
        "min_sensitivity": min_sensitivity,
        "before": {"temperature": stored[0], "intercept": stored[1], "threshold": stored[2], **{key: before[key] for key in (*FIGURES, "roc_auc")}},
        "after": {"temperature": temperature, "intercept": intercept, "threshold": threshold, **{key: after[key] for key in (*FIGURES, "roc_auc")}},
        "crossfit": crossfit(logits, labels, np.asarray(films["patient"]), min_sensitivity, stored, repeats, method),
    }
    ModelFolder(folder).copy_to(output)
    output.set_calibration(temperature, threshold, intercept)
    output.write(CALIBRATION, report)
    if output.has(SUMMARY):
        write_model_card(output.path)
    else:
        logger.warning("%s has no training_summary.json: its card is left as it was.", folder)
    return report
