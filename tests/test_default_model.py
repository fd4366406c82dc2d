"""The model shipped inside the package: loads offline with no argument and separates real X-rays."""

from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_DATA

from pneumo_hf import LABELS, load_predictor
from pneumo_hf.examples import find_examples
from pneumo_hf.inference import DEFAULT_MODEL_DIR


def test_default_model_loads_offline_with_its_card(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    predictor = load_predictor()
    assert predictor.folder == DEFAULT_MODEL_DIR
    assert 0.0 < predictor.threshold < 1.0 and predictor.classifier.temperature > 0
    assert predictor.classifier.test_time_views == ()
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
    # known films, known decisions: the shipped example films, each far from the threshold, decided as labelled
    for film in find_examples()[0]:
        assert predictor.predict(str(film)).decision == film.parent.name, film


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="needs ../shared/data")
def test_shipped_example_films_come_from_the_validation_split_never_train_or_test_dev():
    from pneumo_hf.evaluation import validation_split_of
    from pneumo_hf.examples import find_examples

    films, _ = find_examples()
    validation = {Path(row["path"]).name for row in validation_split_of(DEFAULT_MODEL_DIR)["image"]}
    test_dev = {path.name for path in (REAL_DATA.parent / "test_dev").rglob("*")}
    assert len(films) == 8 and {film.parent.name for film in films} == set(LABELS)
    assert all(film.name in validation and film.name not in test_dev for film in films)
    assert all((REAL_DATA / film.parent.name / film.name).read_bytes() == film.read_bytes() for film in films)
