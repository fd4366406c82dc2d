"""Scoring a classifier on a split, replaying a run's split, fitting temperature and threshold, and `finalize()`: the one
way a trained classifier becomes a complete model folder (used by training and by ensembles). Nothing here imports the
training loop: `pneumo-hf evaluate`, `calibrate`, the card and the experiments read only this.

    from pneumo_hf.evaluation import score_split, split_loader, validation_split_of
    scores, labels = score_split(classifier, split_loader(classifier, validation_split_of("runs/b0")))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from . import metrics
from .card import write_model_card
from .data import DataError, collate, load_splits, skipping_unreadable
from .folder import ARGUMENTS, ModelFolder
from .models import PneumoniaClassifier
from .schema import Results, Run, Storage, TrainingSummary
from .transforms import build_transform
from .tta import logits_with_views

logger = logging.getLogger(__name__)

__all__ = ["finalize", "fit_calibration", "predict_logits", "run_splits", "score_split", "split_loader", "split_seed", "threshold_rule", "validation_split_of"]


@torch.no_grad()
def predict_logits(model: nn.Module, loader, accelerator: Accelerator, views: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Logits (averaged over test-time `views`, see `pneumo_hf.tta`) and labels of every image once,
    across all processes (`gather_for_metrics`)."""
    model.eval()
    all_logits, all_labels, skipped = [], [], 0
    for batch in loader:
        skipped += int(batch["n_skipped"])
        logits = logits_with_views(model, batch["pixel_values"], views)
        logits, labels = accelerator.gather_for_metrics((logits, batch["labels"]))
        all_logits.append(logits.cpu().numpy())
        all_labels.append(labels.cpu().numpy())
    if skipped:
        logger.warning("%d unreadable evaluation images skipped.", skipped)
    return np.concatenate(all_logits), np.concatenate(all_labels)


def score_split(classifier: PneumoniaClassifier, batches, accelerator: Optional[Accelerator] = None, views: Optional[Sequence[str]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated PNEUMONIA probabilities and labels of a split, as `load_predictor()` scores each film: the model's
    stored test-time views (unless `views` are given) and temperature. `batches`: a `split_loader`, or any iterable of
    such batches (train/experiments/occlusion.py greys them first). The one scoring used by `pneumo-hf evaluate`,
    train/write_card.py and the experiments."""
    views = classifier.test_time_views if views is None else views
    logits, labels = predict_logits(classifier, batches, accelerator or Accelerator(), views)
    return metrics.probabilities(logits, classifier.temperature, classifier.intercept)[:, 1], labels


def split_loader(classifier: PneumoniaClassifier, dataset: datasets.Dataset, batch_size: int = 64):
    """A loader of `dataset` through the model's own preprocessing, for `predict_logits` and `score_split`."""
    return torch.utils.data.DataLoader(skipping_unreadable(dataset, build_transform(classifier.data_config)), batch_size=batch_size, collate_fn=collate)


def split_seed(run: dict[str, Any]) -> int:
    """The seed that drew a run's validation split: --split_seed, else --seed (its training_args.json as a dict)."""
    return run["seed"] if run.get("split_seed") is None else run["split_seed"]


def run_splits(run: dict[str, Any]) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The (train, validation) splits of a run, from its arguments as a dict (its training_args.json)."""
    return load_splits(run["dataset_name"], run["train_dir"], run["validation_dir"], run["validation_fraction"], split_seed(run), run["max_train_samples"])


def validation_split_of(folder: Union[str, Path]) -> datasets.Dataset:
    """The validation split of the run that wrote model folder `folder`, rebuilt from its training_args.json."""
    arguments = ModelFolder(folder).read(ARGUMENTS)
    if arguments is None:
        raise DataError(f"{folder} has no training_args.json to rebuild its validation split from; pass `data_dir` or `dataset_name`.")
    return run_splits(arguments)[1]


def fit_calibration(logits: np.ndarray, labels: np.ndarray, min_sensitivity: float) -> tuple[float, float]:
    """Temperature by likelihood, then the most specific threshold keeping `min_sensitivity`, on these films."""
    temperature = metrics.fit_temperature(logits, labels)
    threshold = metrics.choose_threshold(labels, metrics.probabilities(logits, temperature)[:, 1], min_sensitivity)
    return temperature, threshold


def threshold_rule(min_sensitivity: float) -> str:
    return f"the most specific threshold that keeps validation sensitivity ≥ {min_sensitivity}"


def finalize(
    classifier: PneumoniaClassifier,
    output_dir: Union[str, Path],
    validation: tuple[np.ndarray, np.ndarray],
    min_sensitivity: float,
    run: Run,
    *,
    storage: Optional[Storage] = None,
    calibration: Optional[tuple[float, float]] = None,
    test_dev: Optional[tuple[np.ndarray, np.ndarray]] = None,
    arguments: Optional[dict[str, Any]] = None,
    model_id: Optional[str] = None,
) -> Results:
    """Write the complete model folder of a trained classifier: config.json + weights (as `storage` says), the
    validation and test_dev figures and plots, all_results.json, training_args.json, training_summary.json and the card.

    `validation` and `test_dev` are the (logits, labels) of the weights as stored, with the classifier's test-time views.
    Temperature and threshold are fitted on `validation` unless `calibration` gives them (training fits them on fp32
    logits before choosing fp16). `run` is what only the caller knows (`pneumo_hf.schema.Run`); `storage`, fp32 unless given. A domain check goes
    into the folder first: the card quotes it."""
    folder, storage = ModelFolder(output_dir), storage or Storage()
    logits, labels = validation
    classifier.temperature, classifier.threshold = calibration or fit_calibration(logits, labels, min_sensitivity)
    classifier.intercept = 0.0  # a training run's calibration is the temperature alone (`pneumo-hf calibrate` fits Platt's)
    scores = metrics.probabilities(logits, classifier.temperature, classifier.intercept)[:, 1]
    found = metrics.classification_metrics(labels, scores, classifier.threshold)
    classifier.save_pretrained(folder.path, half=storage.half)
    test_dev_found = None
    if test_dev is not None:
        test_scores = metrics.probabilities(test_dev[0], classifier.temperature, classifier.intercept)[:, 1]
        test_dev_found = metrics.classification_metrics(test_dev[1], test_scores, classifier.threshold)
        logger.info("test_dev: ROC-AUC %.4f, accuracy %.4f, sensitivity %.4f, specificity %.4f (%d films).", *(test_dev_found[key] for key in ("roc_auc", "accuracy", "sensitivity", "specificity", "n")))
        metrics.plot_split(test_dev[1], test_scores, classifier.threshold, folder.path, "test_dev", "Official test split, half A")
    metrics.plot_split(labels, scores, classifier.threshold, folder.path, "validation", "Validation split")
    results = Results(
        validation=found, test_dev=test_dev_found, temperature=classifier.temperature, trained_from_scratch=classifier.trained_from_scratch,
        weights_dtype=storage.dtype, members=run.members, epochs_run=run.epochs_run, train_images=run.train_images, skipped_images=run.skipped_images,
        train_seconds=run.train_seconds, base_model=classifier.base_model, base_model_revision=classifier.base_model_revision,
        fp16_members=storage.fp16_members if storage.fp16_max_change is not None else None, fp16_max_probability_change=storage.fp16_max_change,
    )
    folder.write_results(results)
    if arguments is not None:
        folder.write(ARGUMENTS, arguments)
    ensemble = run.member_origins is not None
    folder.write_summary(TrainingSummary(
        model_id=model_id,
        family=classifier.family,
        architecture=f"pneumo_ensemble({', '.join(origin['architecture'] for origin in run.member_origins)})" if ensemble else classifier.architecture,
        trained_from_scratch=classifier.trained_from_scratch,
        threshold_rule=threshold_rule(min_sensitivity),
        temperature=classifier.temperature,
        test_time_views=list(classifier.test_time_views),
        storage=storage,
        input_size=list(classifier.data_config["input_size"]),
        mean=list(classifier.data_config["mean"]),
        std=list(classifier.data_config["std"]),
        loss=run.loss,
        class_weights=run.class_weights,
        epochs_run=" + ".join(str(epochs) for epochs in run.member_epochs) if run.member_epochs else run.epochs_run,
        train_images=run.train_images,
        train_seconds=run.train_seconds,
        command=run.command,
        base_model=classifier.base_model,
        base_model_revision=classifier.base_model_revision,
        weights_source=classifier.weights_source,
        linear_probe_c=run.linear_probe_c,
        members=run.member_origins,
    ))
    write_model_card(folder.path, model_id)
    logger.info("Model folder written to %s (validation ROC-AUC %.4f, threshold %.4f).", folder.path, found["roc_auc"], classifier.threshold)
    return results
