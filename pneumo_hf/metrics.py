"""Pure functions on arrays: metrics, threshold choice, temperature calibration, and their plots.

    from pneumo_hf.metrics import classification_metrics
    classification_metrics(labels, pneumonia_probabilities, threshold=0.5)   # flat dict, JSON-ready
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn import metrics as skm

from .folder import PLOT_KINDS, plot_name
from .labels import LABELS, POSITIVE_LABEL

__all__ = [
    "classification_metrics",
    "expected_calibration_error",
    "choose_threshold",
    "fit_temperature",
    "fit_platt",
    "positive_calibration_error",
    "paired_bootstrap",
    "site_figures",
    "mean_and_spread",
    "probabilities",
    "plot_roc",
    "plot_confusion",
    "plot_reliability",
    "plot_split",
    "plot_history",
]


def probabilities(logits: np.ndarray, temperature: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    """Softmax of logits / temperature, the PNEUMONIA logit shifted by `intercept` (Platt's), shape (n, 2):
    P(PNEUMONIA) = sigmoid((l1 - l0) / temperature + intercept)."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    if intercept:
        scaled = scaled + np.array([0.0, intercept])
    return softmax(scaled, axis=1)


def probability_change(logits: np.ndarray, rounded_logits: np.ndarray, temperature: float) -> float:
    """The largest change of a calibrated P(PNEUMONIA) between two sets of logits of the same films: how far storing
    the weights in fp16 moves a prediction (training and ensembles store fp16 only within a tolerance of it)."""
    return float(np.abs(probabilities(rounded_logits, temperature)[:, 1] - probabilities(logits, temperature)[:, 1]).max())


def fit_platt(logits: np.ndarray, labels: Sequence[int]) -> tuple[float, float]:
    """Platt scaling: scikit-learn's unpenalised logistic regression of the label on the logit difference l1 - l0,
    returned as (temperature, intercept) = (1 / slope, intercept) for `probabilities`."""
    from sklearn.linear_model import LogisticRegression

    margin = (np.asarray(logits, dtype=np.float64)[:, 1] - np.asarray(logits, dtype=np.float64)[:, 0]).reshape(-1, 1)
    fitted = LogisticRegression(C=np.inf, max_iter=1000).fit(margin, np.asarray(labels))
    slope = float(fitted.coef_[0, 0])
    if slope <= 0:  # the logits rank the films backwards: no scaling can calibrate them
        raise ValueError(f"Platt scaling found slope {slope:.3g} <= 0: the model ranks these films the wrong way round.")
    return 1.0 / slope, float(fitted.intercept_[0])


def site_figures(labels: Sequence[int], scores: Sequence[float], threshold: float) -> dict[str, Any]:
    """`classification_metrics` and the ECE of P(PNEUMONIA) itself (`ece_pneumonia`): both ECEs, for a site's films."""
    return {**classification_metrics(labels, scores, threshold), "ece_pneumonia": positive_calibration_error(labels, scores)}


def paired_bootstrap(labels: np.ndarray, patients: np.ndarray, candidate: tuple[np.ndarray, np.ndarray], baseline: tuple[np.ndarray, np.ndarray], resamples: int = 2000, seed: int = 0) -> dict[str, list[float]]:
    """ΔROC-AUC and Δaccuracy (candidate − baseline) with their 95 % intervals, resampling patients with replacement
    (a patient's films move together). Each model is (scores, correct): P(PNEUMONIA) per film and how often its
    decision was right (1/0, or a share over cross-fitted repeats). Returns {"delta_roc_auc": [low, estimate, high],
    "delta_accuracy": [...]}."""
    labels, patients = np.asarray(labels), np.asarray(patients)
    groups = [np.flatnonzero(patients == patient) for patient in np.unique(patients)]
    rng = np.random.default_rng(seed)

    def deltas(index: np.ndarray) -> tuple[float, float]:
        if len(np.unique(labels[index])) < 2:
            return float("nan"), float("nan")
        auc = skm.roc_auc_score(labels[index], candidate[0][index]) - skm.roc_auc_score(labels[index], baseline[0][index])
        return float(auc), float(candidate[1][index].mean() - baseline[1][index].mean())

    drawn = np.array([deltas(np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])) for _ in range(resamples)])
    estimate = deltas(np.arange(len(labels)))
    return {name: [float(np.nanpercentile(drawn[:, k], 2.5)), estimate[k], float(np.nanpercentile(drawn[:, k], 97.5))] for k, name in enumerate(("delta_roc_auc", "delta_accuracy"))}


def positive_calibration_error(labels: Sequence[int], scores: Sequence[float], n_bins: int = 10) -> float:
    """ECE of P(PNEUMONIA) itself over `n_bins` equal-width bins: the share-weighted gap between each bin's mean
    probability and its share of PNEUMONIA films (a lean towards one class shows here, not in the top-label ECE)."""
    labels, scores = np.asarray(labels, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    bins = np.minimum((scores * n_bins).astype(int), n_bins - 1)
    return float(sum((bins == b).mean() * abs(labels[bins == b].mean() - scores[bins == b].mean()) for b in np.unique(bins)))


def classification_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, precision, sensitivity (scikit-learn's recall), specificity, F1, ROC-AUC, ECE and the confusion
    matrix for PNEUMONIA scores decided at `threshold`."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    predicted = (scores >= threshold).astype(int)
    (tn, fp), (fn, tp) = skm.confusion_matrix(labels, predicted, labels=[0, 1])
    both_classes = len(np.unique(labels)) == 2
    return {
        "n": int(len(labels)),
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "precision": float(skm.precision_score(labels, predicted, zero_division=0)),
        "sensitivity": float(skm.recall_score(labels, predicted, zero_division=0)),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        "f1": float(skm.f1_score(labels, predicted, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(labels, scores)) if both_classes else float("nan"),
        "ece": expected_calibration_error(labels, scores),
        "threshold": float(threshold),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }


def expected_calibration_error(labels: Sequence[int], scores: Sequence[float], n_bins: int = 10) -> float:
    """ECE of the predicted class's confidence over `n_bins` equal-width bins (scikit-learn has none)."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    predicted = (scores >= 0.5).astype(int)
    confidence = np.where(predicted == 1, scores, 1.0 - scores)
    correct = (predicted == labels).astype(np.float64)
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    error = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


THRESHOLD_MARGIN = 1e-6  # far above float32's rounding of a probability (6e-8), far below any gap between two films' scores


def choose_threshold(labels: Sequence[int], scores: Sequence[float], min_sensitivity: float = 0.95) -> float:
    """The threshold with the highest specificity among those that keep sensitivity ≥ `min_sensitivity`, set just
    under the film it falls on (by THRESHOLD_MARGIN) so that float32 inference still calls that film PNEUMONIA."""
    fpr, tpr, thresholds = skm.roc_curve(labels, scores)
    ok = np.flatnonzero(tpr >= min_sensitivity)
    best = ok[np.argmin(fpr[ok])]  # roc_curve orders by falling threshold: the first minimum is the highest threshold
    return float(min(thresholds[best] - THRESHOLD_MARGIN, 1.0))


def fit_temperature(logits: np.ndarray, labels: Sequence[int]) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of softmax(logits / T)."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)

    def nll(log_t: float) -> float:
        return -log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(labels)), labels].mean()

    return float(np.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))


def mean_and_spread(values: Sequence[float]) -> str:
    """'0.970 ± 0.003' (mean ± sample standard deviation) for a table cell; one value alone, '—' for none."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(labels: Sequence[int], scores: Sequence[float], path: Path, title: str = "ROC", threshold: Optional[float] = None) -> None:
    """The ROC curve, with the operating point of `threshold` marked when given."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    skm.RocCurveDisplay.from_predictions(labels, scores, ax=ax, name=POSITIVE_LABEL)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    if threshold is not None:
        found = classification_metrics(labels, scores, threshold)
        ax.plot(1 - found["specificity"], found["sensitivity"], "o", color="crimson", label=f"threshold {threshold:.3f}")
        ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(labels: Sequence[int], scores: Sequence[float], path: Path, title: str = "Reliability", n_bins: int = 10) -> None:
    """Observed share of PNEUMONIA against the predicted probability, in the `n_bins` equal bins the ECE uses."""
    from sklearn.calibration import CalibrationDisplay

    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    CalibrationDisplay.from_predictions(labels, scores, n_bins=n_bins, ax=ax, name=f"ECE {expected_calibration_error(labels, scores, n_bins):.3f}")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_split(labels: Sequence[int], scores: Sequence[float], threshold: float, folder: Path, prefix: str, title: str) -> list[Path]:
    """ROC with the operating point, confusion matrix at `threshold` and reliability diagram of one split, written to
    `folder` as PREFIX_roc_curve.png, PREFIX_confusion_matrix.png and PREFIX_reliability.png (`pneumo_hf.folder`'s names)."""
    paths = [Path(folder, plot_name(prefix, kind)) for kind in PLOT_KINDS]
    plot_roc(labels, scores, paths[0], f"{title}: ROC", threshold)
    plot_confusion(labels, scores, threshold, paths[1], title)
    plot_reliability(labels, scores, paths[2], f"{title}: reliability")
    return paths


def plot_confusion(labels: Sequence[int], scores: Sequence[float], threshold: float, path: Path, title: str = "Confusion matrix") -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    predicted = (np.asarray(scores) >= threshold).astype(int)
    skm.ConfusionMatrixDisplay.from_predictions(labels, predicted, labels=[0, 1], display_labels=list(LABELS), ax=ax, colorbar=False)
    ax.set_title(f"{title} (threshold {threshold:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_history(history: list[dict[str, float]], path: Path) -> None:
    """Training curves: loss per epoch, and validation ROC-AUC."""
    plt = _figure()
    epochs = [row["epoch"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [row["train_loss"] for row in history], label="train")
    left.plot(epochs, [row["validation_loss"] for row in history], label="validation")
    left.set_xlabel("epoch"), left.set_ylabel("loss"), left.legend()
    right.plot(epochs, [row["validation_roc_auc"] for row in history])
    right.set_xlabel("epoch"), right.set_ylabel("validation ROC-AUC")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
