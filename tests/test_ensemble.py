"""Ensembles: members fed their own preprocessing inside one timm model, the folder built by train/ensemble.py, and
its predictions equal to the mean of the members' calibrated logits."""

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import predicts_as_its_logits, tiny_run
from safetensors.torch import load_file
from transformers import HfArgumentParser

from pneumo_hf import load_predictor
from pneumo_hf.cam import HeatmapMaker, grad_cam_scaled
from pneumo_hf.ensemble import member_spec
from pneumo_hf.families import family_of
from pneumo_hf.models import PneumoniaClassifier, build_classifier
from pneumo_hf.training import TrainingArguments
from pneumo_hf.transforms import build_transform
from pneumo_hf.tta import logits_with_views

ROOT = Path(__file__).resolve().parents[1]


def random_ensemble() -> tuple[PneumoniaClassifier, PneumoniaClassifier, torch.nn.Module]:
    """A ResNet18 at 64 px (ImageNet normalisation) and a keras_cnn at 48 px ([0, 1], temperature 2) as one ensemble."""
    first, second = build_classifier("resnet18", image_size=64).eval(), build_classifier("keras_cnn", image_size=48).eval()
    second.temperature = 2.0
    specs = [member_spec(member.backbone, member.data_config, member.temperature) for member in (first, second)]
    ensemble = timm.create_model("pneumo_ensemble", members=specs).eval()
    for slot, member in zip(ensemble.members, (first, second), strict=True):
        slot.load_state_dict(member.backbone.state_dict())
    return first, second, ensemble


def test_each_member_gets_the_film_as_its_own_preprocessing_makes_it():
    first, second, ensemble = random_ensemble()
    film = torch.rand(1, 3, 64, 64)  # pixels in [0, 1]
    as_first = build_transform(first.data_config).transforms[-1](film)  # the first member's normalisation
    inputs = ensemble.member_inputs(as_first)
    assert inputs[0] is as_first
    assert torch.allclose(inputs[1], torch.nn.functional.interpolate(film, size=(48, 48), mode="bilinear", antialias=True), atol=1e-5)  # mean 0, std 1
    with torch.no_grad():
        expected = (first(as_first) / 1.0 + second(inputs[1]) / 2.0) / 2
        assert torch.allclose(ensemble(as_first), expected, atol=1e-5)


def test_a_pooling_members_evidence_adds_up_to_its_logit_margin():
    first, _, _ = random_ensemble()
    pixel_values = torch.randn(2, 3, 64, 64)
    logits, evidence = family_of(first.backbone).evidence(pixel_values, 2)
    head = first.backbone.get_classifier()
    # the class activation map of the PNEUMONIA − NORMAL row: its cells sum to the margin, less the head's bias
    assert torch.allclose(evidence.sum(dim=(1, 2)) + head.bias[1] - head.bias[0], logits[:, 1] - logits[:, 0], atol=1e-4)


def test_a_keras_members_evidence_is_pytorch_grad_cams_hirescam_at_its_last_relu():
    from pytorch_grad_cam import HiResCAM

    _, second, _ = random_ensemble()
    member = second.backbone
    pixel_values = torch.rand(2, 3, 48, 48)
    _, evidence = family_of(member).evidence(pixel_values, 2)
    reference = HiResCAM(model=member, target_layers=[member.blocks[-1][1]])
    expected = reference(input_tensor=pixel_values, targets=[lambda output: output[1] - output[0]] * 2)
    reference.activations_and_grads.release()
    assert np.allclose(grad_cam_scaled(evidence.clamp(min=0).numpy(), pixel_values), expected, atol=1e-4)


def test_the_ensemble_map_weighs_its_members_as_it_weighs_their_logits_and_follows_the_film():
    torch.manual_seed(0)  # random members whose maps hold evidence for PNEUMONIA in both films
    first, second, ensemble = random_ensemble()
    classifier = PneumoniaClassifier(ensemble, dict(first.data_config), test_time_views=("hflip",))
    pixel_values = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    maps, logits = HeatmapMaker(classifier)(pixel_values, classifier.test_time_views)
    assert (maps.max(axis=(1, 2)) == 1.0).all()  # some evidence for PNEUMONIA in both films: the comparison below means something
    inputs = ensemble.member_inputs(pixel_values)
    combined = torch.zeros(2, 64, 64)
    for member, inputs_of, weight in ((first.backbone, inputs[0], 1 / (2 * 1.0)), (second.backbone, inputs[1], 1 / (2 * 2.0))):  # 1 / (members · temperature)
        combined += weight * torch.nn.functional.interpolate(family_of(member).evidence(inputs_of, 2)[1][:, None], size=(64, 64), mode="bilinear")[:, 0]
    combined = combined.clamp(min=0)
    assert np.allclose(maps, (combined / combined.amax(dim=(1, 2), keepdim=True)).numpy(), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(logits, logits_with_views(classifier, pixel_values, ("hflip",)), atol=1e-5)
    other, _ = HeatmapMaker(classifier)(torch.flip(pixel_values, dims=(-1,)))
    assert not np.allclose(other, maps, atol=0.05)  # another film, another map


@pytest.fixture(scope="module")
def second_member(tmp_path_factory, image_folder, trained_folder) -> Path:
    """A keras_cnn validated on the trained_folder's split."""
    output = tmp_path_factory.mktemp("runs") / "keras"
    return tiny_run(output, image_folder, model_name_or_path="keras_cnn", image_size=40, num_train_epochs=1)


def run_ensemble(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train" / "ensemble.py"), *args], capture_output=True, text=True, timeout=300)


def test_ensemble_folder_predicts_the_mean_of_calibrated_member_logits(tmp_path, trained_folder, second_member, image_folder):
    output = tmp_path / "ensemble"
    result = run_ensemble(str(trained_folder), str(second_member), "--output_dir", str(output), "--test_dev_dir", str(image_folder), "--test_time_views", "hflip")
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("config.json", "model.safetensors", "README.md", "all_results.json", "training_args.json", "domain_check.json"):
        assert (output / name).is_file(), name
    ensemble, members = load_predictor(output), [load_predictor(trained_folder), load_predictor(second_member)]
    film = next((image_folder / "PNEUMONIA").iterdir())
    image = ensemble.predict(film).image
    inputs = ensemble.classifier.backbone.member_inputs(ensemble.transform(image).unsqueeze(0))
    logits = []
    for member, pixels in zip(members, inputs, strict=True):  # each member's own weights and temperature, over the film and its mirror
        with torch.no_grad():
            logits.append(member.classifier(torch.cat([pixels, pixels.flip(-1)])).mean(dim=0) / member.classifier.temperature)
    expected = torch.softmax(torch.stack(logits).mean(dim=0) / ensemble.classifier.temperature, dim=0).numpy()
    assert np.allclose([ensemble.predict(film).probabilities[label] for label in ("NORMAL", "PNEUMONIA")], expected, atol=1e-5)
    prediction = ensemble.predict(film, heatmap=True)
    assert prediction.heatmap.shape == (image.height, image.width) and 0 <= prediction.heatmap.min() <= prediction.heatmap.max() <= 1
    assert ensemble.domain is not None  # the first member's check: the same first convolution on the same input
    results = json.loads((output / "all_results.json").read_text())
    assert results["members"] == [str(trained_folder), str(second_member)] and "test_dev_roc_auc" in results
    card = (output / "README.md").read_text()
    assert "pneumo_ensemble(resnet18, keras_cnn)" in card and "Adults: do not use it on them" in card
    assert "it registers `pneumo_ensemble` with timm" in card
    for member in (trained_folder, second_member):  # the card retrains each member from its own arguments file
        assert f"python train/train.py {member / 'training_args.json'}\n" in card
        (parsed,) = HfArgumentParser(TrainingArguments).parse_json_file(member / "training_args.json")
        assert asdict(parsed) == json.loads((member / "training_args.json").read_text())


def test_the_pneumo_hf_command_builds_the_same_folder_and_records_itself(tmp_path, trained_folder, second_member):
    script = run_ensemble(str(trained_folder), str(second_member), "--output_dir", str(tmp_path / "script"))
    command = subprocess.run([sys.executable, "-m", "pneumo_hf", "ensemble", str(trained_folder), str(second_member), "--output_dir", str(tmp_path / "command")],
                             capture_output=True, text=True, timeout=300)
    assert script.returncode == command.returncode == 0, command.stderr[-2000:]
    assert (tmp_path / "script" / "model.safetensors").read_bytes() == (tmp_path / "command" / "model.safetensors").read_bytes()
    recorded = json.loads((tmp_path / "command" / "training_summary.json").read_text())["command"].splitlines()[-1]
    assert recorded.startswith("pneumo-hf ensemble ") and json.loads((tmp_path / "script" / "training_summary.json").read_text())["command"].splitlines()[-1].startswith("python train/ensemble.py ")


def test_members_validated_on_different_splits_are_refused(tmp_path, trained_folder, second_member):
    other = tmp_path / "other"
    other.mkdir()
    for path in second_member.iterdir():
        if path.is_file():
            (other / path.name).write_bytes(path.read_bytes())
    args = json.loads((other / "training_args.json").read_text())
    (other / "training_args.json").write_text(json.dumps({**args, "split_seed": 3}))
    result = run_ensemble(str(trained_folder), str(other), "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 1 and "different splits" in result.stderr and "Traceback" not in result.stderr


def test_an_offline_push_keeps_the_named_ensemble_folder(tmp_path, trained_folder, second_member, image_folder):
    output = tmp_path / "ensemble"
    result = subprocess.run(
        [sys.executable, str(ROOT / "train" / "ensemble.py"), str(trained_folder), str(second_member), "--output_dir", str(output), "--hub_model_id", "org/tiny-ensemble", "--push_to_hub"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 1 and "Cannot reach the Hub to push org/tiny-ensemble" in result.stderr and "Traceback" not in result.stderr
    assert predicts_as_its_logits(output, next((image_folder / "NORMAL").iterdir()))
    assert "# org/tiny-ensemble" in (output / "README.md").read_text()


def test_members_saved_in_fp16_load_as_their_rounded_weights(tmp_path):
    """`half=["members.1"]`: that member in fp16 on disk, the other in fp32, predicting as fp16_rounded says."""
    first, _, ensemble = random_ensemble()
    classifier = PneumoniaClassifier(ensemble, dict(first.data_config))
    classifier.save_pretrained(tmp_path, half=["members.1"])
    dtypes = {name.split(".")[1]: tensor.dtype for name, tensor in load_file(tmp_path / "model.safetensors").items() if tensor.is_floating_point()}
    assert dtypes == {"0": torch.float32, "1": torch.float16}
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        loaded = PneumoniaClassifier.from_pretrained(tmp_path).eval()(pixel_values)
        assert torch.allclose(loaded, classifier.fp16_rounded(["members.1"])(pixel_values), atol=1e-6)


def test_save_fp16_stores_the_members_within_the_tolerance(tmp_path, trained_folder, second_member):
    output = tmp_path / "ensemble"
    result = run_ensemble(str(trained_folder), str(second_member), "--output_dir", str(output), "--save_fp16", "--fp16_tolerance", "1.0")
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((output / "all_results.json").read_text())
    assert results["weights_dtype"] == "float16" and results["fp16_members"] == ["members.0", "members.1"]
    assert {tensor.dtype for tensor in load_file(output / "model.safetensors").values() if tensor.is_floating_point()} == {torch.float16}
    assert "fp16" in (output / "README.md").read_text()


def test_a_member_taken_out_of_an_ensemble_folder_predicts_as_it_did_inside(tmp_path, trained_folder, second_member, image_folder):
    """FOLDER#members.1: one member of an ensemble folder, with the weights, input and temperature the ensemble held,
    joins a new ensemble; its first member's domain check and origin come along."""
    pair, nested = tmp_path / "pair", tmp_path / "nested"
    assert run_ensemble(str(trained_folder), str(second_member), "--output_dir", str(pair)).returncode == 0
    result = run_ensemble(f"{pair}#members.0", f"{pair}#members.1", str(trained_folder), "--output_dir", str(nested), "--save_fp16", "--fp16_tolerance", "1.0")
    assert result.returncode == 0, result.stderr[-2000:]
    taken, inside = load_predictor(nested).classifier.backbone, load_predictor(pair).classifier.backbone
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for index in (0, 1):  # fp16 rounding only: the members were fp32
            ours, theirs = taken.member_inputs(pixel_values)[index], inside.member_inputs(pixel_values)[index]
            assert torch.allclose(taken.members[index](ours), inside.members[index](theirs), atol=1e-2)
    assert [spec["temperature"] for spec in taken.specs[:2]] == [spec["temperature"] for spec in inside.specs]
    summary = json.loads((nested / "training_summary.json").read_text())
    assert [member["architecture"] for member in summary["members"]] == ["resnet18", "keras_cnn", "resnet18"]
    assert f"taken from the ensemble {pair}" in summary["command"] and (nested / "domain_check.json").read_text() == (pair / "domain_check.json").read_text()
    for reference, message in ((f"{pair}#members.5", "has no such member"), (f"{pair}#head", "FOLDER#members.I"), (f"{trained_folder}#members.0", "has no such member")):
        refused = run_ensemble(reference, str(trained_folder), "--output_dir", str(tmp_path / "refused"))
        assert refused.returncode == 1 and message in refused.stderr and "Traceback" not in refused.stderr, refused.stderr[-500:]
