"""`pneumo-hf adapt` on a tiny linear probe (Lite0's packaged weights at 64 px): only the head's tensors change, a site
whose films lean the other way gets a better cross-fitted calibration, too few films are refused with their sentence,
and the card names the films that adapted it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_run, write_image_folder
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

from pneumo_hf import load_predictor
from pneumo_hf.checkpoints import write_checkpoint
from pneumo_hf.commands import adapt
from pneumo_hf.domain_fitting import fit_folder_check

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def probe(tmp_path_factory, image_folder) -> Path:
    lite0 = write_checkpoint("tf_efficientnet_lite0", tmp_path_factory.mktemp("checkpoints") / "lite0")
    output = tmp_path_factory.mktemp("probe") / "probe"
    tiny_run(output, image_folder, model_name_or_path=str(lite0), image_size=64, linear_probe=True, num_train_epochs=0)
    fit_folder_check(str(output), features="pooled", max_flagged=0.1, crossfit_repeats=0)  # as the shipped probe's
    return output


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A site whose films differ from the training films (brighter, wider): 14 patients of each label, two films each."""
    root = write_image_folder(tmp_path_factory.mktemp("site") / "site", per_class=28, size=(56, 64))
    for path in root.rglob("*.jpeg"):
        with Image.open(path) as image:
            Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) * 0.7 + 70, 0, 255).astype(np.uint8)).save(path)
    return root


def test_adapt_refits_only_the_head_improves_calibration_and_names_the_films(probe, site, image_folder, tmp_path, capsys):
    output = tmp_path / "adapted"
    assert adapt.main(["--model", str(probe), "--data_dir", str(site), "--output_dir", str(output), "--train_dir", str(image_folder), "--repeats", "3"]) == 0
    printed = capsys.readouterr().out
    assert "56 films of 28 patients" in printed and "cross-fitted (6 halves)" in printed
    before, after = load_file(probe / "model.safetensors"), load_file(output / "model.safetensors")
    changed = sorted(name for name in before if not torch.equal(before[name], after[name]))
    assert changed == ["classifier.bias", "classifier.weight"]
    report = json.loads((output / "adaptation.json").read_text())
    crossfit = report["crossfit"]
    assert crossfit["adapted"]["ece_pneumonia"] < crossfit["stored"]["ece_pneumonia"]
    assert crossfit["adapted"]["accuracy"] > crossfit["stored"]["accuracy"]
    card = ModelCard.load(output / "README.md").text
    assert "## Adapted to a site's films" in card and "56 labelled films of 28 patients" in card and report["films_sha256"][:12] in card
    # the domain check took the site's films into its reference: fewer of them warned on than before
    assert report["domain_check"]["refit"] and report["domain_check"]["site_flagged_after_crossfitted"] <= report["domain_check"]["site_flagged_before"]
    assert json.loads((output / "domain_check.json").read_text())["calibration"] == "the site's films, cross-fitted"
    # the folder predicts with what was fitted: the loaded predictor's probability is the report's calibration
    film = next(site.rglob("*.jpeg"))
    adapted = load_predictor(output)
    assert adapted.threshold == pytest.approx(report["threshold"]) and adapted.classifier.intercept == pytest.approx(report["intercept"])
    assert 0.0 < adapted.predict(film).probabilities["PNEUMONIA"] < 1.0


def test_too_few_films_are_refused_with_their_sentence(probe, image_folder, tmp_path, caplog):
    few = write_image_folder(tmp_path / "few", per_class=6)
    assert adapt.main(["--model", str(probe), "--data_dir", str(few), "--output_dir", str(tmp_path / "out"), "--train_dir", str(image_folder)]) == 1
    assert "holds 6 NORMAL and 6 PNEUMONIA films of 6 patients; adaptation needs at least 10 of each label and 20 patients" in caplog.text
    assert not (tmp_path / "out").exists()


def test_a_model_without_a_linear_probe_is_refused(trained_folder, site, image_folder, tmp_path, caplog):
    assert adapt.main(["--model", str(trained_folder), "--data_dir", str(site), "--output_dir", str(tmp_path / "out"), "--train_dir", str(image_folder)]) == 1
    assert "records no linear_probe_c: its first member is not a linear probe" in caplog.text
