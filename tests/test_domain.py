"""The domain check: flags what is not a child's chest film, passes ordinary films, round-trips through the model
folder; a folder without it still loads and predicts."""

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import xray_like
from PIL import Image, ImageDraw, ImageOps

from pneumo_hf import load_predictor
from pneumo_hf.domain import (
    DOMAIN_WARNING,
    DOMAIN_WARNINGS,
    INVERTED_WARNING,
    MAX_FEATURES,
    VERY_UNLIKE_WARNING,
    DomainCheck,
    default_grid,
    film_statistics,
    fit_domain_check,
)
from pneumo_hf.examples import find_examples
from pneumo_hf.inference import Predictor
from pneumo_hf.models import PneumoniaClassifier, build_classifier

ROOT = Path(__file__).resolve().parent.parent


def not_xrays() -> dict[str, Image.Image]:
    rng = np.random.default_rng(3)
    page = Image.new("RGB", (240, 320), "white")
    draw = ImageDraw.Draw(page)
    for line in range(14):
        draw.text((10, 10 + 20 * line), "Discharge summary: no acute findings. " * 2, fill="black")
    return {
        "noise": Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)),
        "document": page,
        "colour blobs": Image.fromarray(np.clip(rng.normal(128, 60, (6, 6, 3)).repeat(40, 0).repeat(40, 1), 0, 255).astype(np.uint8)),
        "grey gradient": Image.fromarray(np.tile(np.linspace(0, 255, 256, dtype=np.uint8), (256, 1))),
    }


@pytest.fixture(scope="module")
def shipped():
    return load_predictor()


def test_shipped_check_flags_non_xrays_and_an_inverted_film_naming_the_reason(shipped):
    assert shipped.domain is not None and shipped.domain.info["calibration_flagged"] <= 0.05
    for name, image in not_xrays().items():
        assert shipped.predict(image).warnings[0] in DOMAIN_WARNINGS, name
    assert shipped.predict(not_xrays()["document"]).warnings[0] == VERY_UNLIKE_WARNING
    film = Image.open(find_examples()[0][-1])
    assert not set(DOMAIN_WARNINGS) & set(shipped.predict(film).warnings)
    assert shipped.predict(ImageOps.invert(film.convert("RGB"))).warnings[0] == INVERTED_WARNING


def test_the_sentence_names_the_reason_the_distances_give():
    check = DomainCheck(None, {}, cut=10.0, info={}, grid=1)
    assert check.warning(9.0) is None and check.warning(12.0) == DOMAIN_WARNING and check.warning(12.0, inverted_distance=15.0) == DOMAIN_WARNING
    assert check.warning(12.0, inverted_distance=8.0) == INVERTED_WARNING and check.warning(25.0) == VERY_UNLIKE_WARNING


def test_shipped_check_passes_ordinary_films(shipped):
    films, _ = find_examples()
    assert [prediction.warnings for prediction in shipped.predict_batch(films)] == [[]] * len(films)


def batches_of(seeds, pneumonia: bool, transform) -> list[torch.Tensor]:
    return [torch.stack([transform(Image.fromarray(xray_like(seed, (64, 56), pneumonia)).convert("RGB")) for seed in seeds])]


def fitted_and_loaded(folder: Path, kind: str):
    """A check of `kind` fitted on generated films for a tiny model saved in `folder`, that folder's predictor, a probe
    batch and the check's transform; asserts the loaded check measures as the fitted one."""
    torch.manual_seed(0)
    classifier = build_classifier("resnet18", image_size=32).eval()
    classifier.save_pretrained(folder)
    transform = Predictor(classifier).transform
    train = batches_of(range(80), False, transform) + batches_of(range(80, 160), True, transform)
    check = fit_domain_check(classifier, train, batches_of(range(200, 240), False, transform), max_flagged=0.05, calibration_name="generated", kind=kind)
    assert check.info["calibration_flagged"] <= 0.05 and check.info["train_films"] == 160
    check.save(folder)
    loaded = load_predictor(folder)
    probe = batches_of(range(300, 310), True, transform)[0]
    assert np.allclose(loaded.domain.distances(probe), check.distances(probe), rtol=1e-3)  # the loaded predictor's norms are folded
    assert loaded.domain.cut == check.cut and loaded.domain.info["calibration"] == "generated"
    assert loaded.domain.flags(torch.randn(2, 3, 32, 32) * 3) == [True, True]  # noise
    return classifier, check, loaded


def test_statistics_round_trip_through_the_model_folder(tmp_path):
    _, check, loaded = fitted_and_loaded(tmp_path, "first_conv")
    assert loaded.domain.grid == check.grid == 3


def test_the_pooled_embedding_check_round_trips_and_an_ensemble_reads_its_first_members(tmp_path):
    """The check for pretrained backbones: the Mahalanobis distance of the pooled embedding (Ledoit-Wolf)."""
    import timm

    from pneumo_hf.domain import POOLED
    from pneumo_hf.ensemble import member_spec
    from pneumo_hf.models import PneumoniaClassifier

    classifier, check, loaded = fitted_and_loaded(tmp_path, "pooled")
    assert check.kind == loaded.domain.kind == POOLED and check.grid is None and 0 < check.info["shrinkage"] < 1
    assert json.loads((tmp_path / "domain_check.json").read_text())["features"] == POOLED
    films = [Image.fromarray(xray_like(seed, (64, 56))).convert("RGB") for seed in range(400, 404)]
    pixel_values = torch.stack([loaded.transform(film) for film in films])
    expected = loaded.domain_warnings(pixel_values)  # its own forward pass
    calls = []
    loaded.classifier.backbone.forward_features = (lambda run: lambda x: calls.append(len(x)) or run(x))(loaded.classifier.backbone.forward_features)
    predictions = loaded.predict_images(films, pixel_values, heatmap=True)
    assert calls == [4], "the check reads the embedding of the prediction's own forward pass, not a second one"
    assert [p.warnings[0] if p.warnings and p.warnings[0] in DOMAIN_WARNINGS else None for p in predictions] == expected
    specs = [member_spec(classifier.backbone, classifier.data_config, 1.0)] * 2
    ensemble = PneumoniaClassifier(timm.create_model("pneumo_ensemble", members=specs), classifier.data_config)
    assert ensemble.adapter.embedding_model() is ensemble.backbone.members[0]  # an ensemble's check reads its first member


def test_a_folder_without_a_check_loads_predicts_and_says_so(tmp_path, caplog):
    build_classifier("resnet18", image_size=32).save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="pneumo_hf.domain"):
        predictor = load_predictor(tmp_path)
    assert predictor.domain is None and "has no domain check" in caplog.text
    assert DomainCheck.load(tmp_path, PneumoniaClassifier.from_pretrained(tmp_path)) is None
    assert not set(DOMAIN_WARNINGS) & set(predictor.predict(not_xrays()["noise"]).warnings)  # nothing to check with


@pytest.mark.parametrize(("channels", "grid"), [(32, 4), (64, 3), (192, 2), (1024, 1)])
def test_wide_first_layers_get_a_coarser_grid(channels, grid):
    """A ViT's patch embedding (192 channels) gets 2×2, so the stored precision matrix stays within 2,048² numbers."""
    conv = torch.nn.Conv2d(3, channels, 3)
    assert default_grid(conv) == grid
    size = film_statistics(conv, torch.zeros(1, 3, 32, 32), grid).shape[1]
    assert size == (2 + 2 * grid**2) * channels and (size <= MAX_FEATURES or grid == 1)


def test_the_fitting_script_refits_a_model_folder_and_reports_each_set(trained_folder, image_folder, tmp_path):
    folder, calibration = tmp_path / "copy", tmp_path / "calibration"
    shutil.copytree(trained_folder, folder)
    shutil.copytree(image_folder, calibration)
    script = [sys.executable, str(ROOT / "train" / "fit_domain_check.py"), "--model", str(folder)]
    flags = ["--calibration_dir", str(calibration), "--pool_validation", "--max_flagged", "0.1", "--report_dir", str(image_folder),
             "--grid", "2", "--shrinkage", "0.1", "--max_train_films", "10", "--crossfit_repeats", "3"]
    result = subprocess.run(script + flags, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(path.name for path in calibration.iterdir()) == ["NORMAL", "PNEUMONIA"]  # the check goes to the model folder only
    stored = json.loads((folder / "domain_check.json").read_text())
    assert (stored["grid"], stored["shrinkage"], stored["train_films"]) == (2, 0.1, 10)
    assert stored["calibration"] == "calibration + the run's validation split" and stored["calibration_films"] == 24 + 6
    assert stored["calibration_flagged"] <= 0.1 and stored["crossfit_flagged"]["halves"] == 6 and 0 <= stored["crossfit_flagged"]["mean"] <= 1
    lines = [line for line in result.stdout.splitlines()[2:-1] if not line.startswith(("calibration:", "cross-fit:"))]
    shares = {name: float(share) for name, _, share in (line.rsplit(maxsplit=2) for line in lines)}
    assert shares["the run's validation split"] >= 0 and "train" in shares and "calibration" in shares
    assert shares["generated: noise"] == shares["generated: document"] == 1.0
    reported = {name: round(share["flagged"], 3) for name, share in stored["reported"].items()}  # kept for the model card
    assert reported == {name: share for name, share in shares.items() if not np.isnan(share)}
    bad = subprocess.run(script + ["--shrinkage", "2"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "a shrinkage between 0 and 1" in bad.stderr
