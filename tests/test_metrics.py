"""Metrics against scikit-learn on hand-made arrays; threshold rule; calibration."""

import numpy as np
import pytest
from sklearn import metrics as skm

from pneumo_hf.metrics import choose_threshold, classification_metrics, expected_calibration_error, fit_temperature, mean_and_spread, probabilities

LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
SCORES = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.9, 0.6, 0.2, 0.95, 0.55])


def test_metrics_match_scikit_learn():
    found = classification_metrics(LABELS, SCORES, threshold=0.5)
    predicted = SCORES >= 0.5
    assert found["accuracy"] == pytest.approx(skm.accuracy_score(LABELS, predicted))
    assert found["precision"] == pytest.approx(skm.precision_score(LABELS, predicted))
    assert found["sensitivity"] == pytest.approx(5 / 6)
    assert found["specificity"] == pytest.approx(3 / 4)
    assert found["f1"] == pytest.approx(skm.f1_score(LABELS, predicted))
    assert found["roc_auc"] == pytest.approx(skm.roc_auc_score(LABELS, SCORES))
    assert found["confusion_matrix"] == [[3, 1], [1, 5]]
    assert found["n"] == 10


def test_expected_calibration_error_by_hand():
    # two bins: confidence 0.9 with 100% right, confidence 0.6 with 50% right
    labels = np.array([1, 1, 1, 0])
    scores = np.array([0.9, 0.9, 0.6, 0.6])
    assert expected_calibration_error(labels, scores) == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)


def test_threshold_is_most_specific_with_required_sensitivity():
    threshold = choose_threshold(LABELS, SCORES, min_sensitivity=0.8)
    found = classification_metrics(LABELS, SCORES, threshold)
    assert found["sensitivity"] >= 0.8
    assert threshold == pytest.approx(0.55, abs=1e-5) and threshold < 0.55  # 0.6 would drop sensitivity to 4/6; just under the film it falls on
    assert classification_metrics(LABELS, SCORES, choose_threshold(LABELS, SCORES, 1.0))["sensitivity"] == 1.0


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (4000, 2))
    labels = (rng.random(4000) < probabilities(true_logits)[:, 1]).astype(int)
    assert fit_temperature(true_logits * 3.0, labels) == pytest.approx(3.0, rel=0.15)


def test_mean_and_spread_is_mean_plus_minus_sample_standard_deviation():
    assert mean_and_spread([0.967, 0.973]) == "0.970 ± 0.004"
    assert mean_and_spread([0.5]) == "0.500"
    assert mean_and_spread([]) == "—"


def test_platt_reproduces_scikit_learns_logistic_regression_on_the_logits():
    from sklearn.linear_model import LogisticRegression

    from pneumo_hf.metrics import fit_platt

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    logits = np.stack([rng.normal(0, 1, 400), rng.normal(0, 1, 400) + 2.5 * labels + 1.0], axis=1)  # leans to PNEUMONIA
    temperature, intercept = fit_platt(logits, labels)
    reference = LogisticRegression(C=np.inf, max_iter=1000).fit((logits[:, 1] - logits[:, 0]).reshape(-1, 1), labels)
    assert probabilities(logits, temperature, intercept)[:, 1] == pytest.approx(reference.predict_proba((logits[:, 1] - logits[:, 0]).reshape(-1, 1))[:, 1], abs=1e-9)
    assert intercept < 0  # it takes back the lean that a temperature, with no intercept, cannot
    assert probabilities(logits, 1.7)[:, 1] == pytest.approx(probabilities(logits, 1.7, 0.0)[:, 1], abs=0)  # temperature alone as before


def test_a_site_with_a_shifted_balance_gets_a_better_ece_of_p_pneumonia_from_platt_than_from_a_temperature():
    from pneumo_hf.calibration import crossfit

    rng = np.random.default_rng(1)
    labels = (rng.random(300) < 0.3).astype(int)  # 30 % PNEUMONIA where the model expects more
    logits = np.stack([np.zeros(300), 2.0 * labels - 0.2 + 1.5 + rng.normal(0, 1.2, 300)], axis=1)
    patients = np.arange(300)
    stored = (1.0, 0.0, 0.5)
    platt = crossfit(logits, labels, patients, 0.9, stored, repeats=5, method="platt")
    temperature = crossfit(logits, labels, patients, 0.9, stored, repeats=5, method="temperature")
    assert platt["refit"]["ece_pneumonia"] < temperature["refit"]["ece_pneumonia"] < platt["stored"]["ece_pneumonia"]
