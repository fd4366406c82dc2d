"""The model shipped inside the package: loads offline with no argument and separates real X-rays."""

import numpy as np
import pytest

from conftest import REAL_DATA
from pneumo_hf import LABELS, load_predictor
from pneumo_hf.inference import DEFAULT_MODEL_DIR


def test_default_model_loads_offline_with_its_card(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    predictor = load_predictor()
    assert predictor.folder == DEFAULT_MODEL_DIR
    assert 0.0 < predictor.threshold < 1.0 and predictor.classifier.temperature > 0
    assert predictor.classifier.test_time_views == ("hflip", "zoom")
    card = (DEFAULT_MODEL_DIR / "README.md").read_text()
    assert "model-index" in card and "Not a medical device" in card and "random initialisation" in card


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="needs ../shared/data")
def test_default_model_separates_validation_xrays():
    """On 40 images of its own patient-grouped validation split (seed 7: never trained on), ROC-AUC stays high."""
    from sklearn.metrics import roc_auc_score

    from pneumo_hf.data import load_splits

    _, validation = load_splits(train_dir=str(REAL_DATA), seed=7)
    rows = [row for row in validation.select(range(0, len(validation), 18))][:40]
    predictor = load_predictor()
    scores = [p.probabilities["PNEUMONIA"] for p in predictor.predict_batch([r["image"]["path"] for r in rows])]
    labels = np.array([r["label"] for r in rows])
    assert set(labels) == {0, 1}
    assert roc_auc_score(labels, scores) > 0.9
    assert {p.label for p in predictor.predict_batch([rows[0]["image"]["path"]])} <= set(LABELS)
