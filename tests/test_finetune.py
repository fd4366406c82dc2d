"""Fine-tuning from checkpoints as a practitioner offline has them: small timm and transformers checkpoints written in
the Hub's own formats into a temporary Hugging Face cache (`snapshots/<commit>/`, `refs/main`) or a local folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from conftest import tiny_run, xray_like
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from pneumo_hf import Predictor
from pneumo_hf.labels import LABELS
from pneumo_hf.models import build_classifier
from pneumo_hf.training import TrainingArguments

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def timm_checkpoint(folder: Path, architecture: str) -> None:
    """A timm checkpoint with its 1000-class ImageNet head, as timm's Hub repos hold it (config.json + model.safetensors)."""
    timm.models.save_for_hf(timm.create_model(architecture), folder, safe_serialization=True)


def transformers_checkpoint(folder: Path, kind: str) -> None:
    """A tiny transformers checkpoint with a 10-class head and its image processor, as `save_pretrained` writes it."""
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification, ViTImageProcessor

    if kind == "vit":
        config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8, num_labels=10)
        ViTForImageClassification(config).save_pretrained(folder)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    else:  # as microsoft/resnet-50: ConvNeXt's processor, resizing the shortest edge
        config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10)
        ResNetForImageClassification(config).save_pretrained(folder)
        ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(folder)


CHECKPOINTS = {
    "timm/test_resnet.r160_in1k": lambda folder: timm_checkpoint(folder, "test_resnet"),
    "timm/test_vit.r160_in1k": lambda folder: timm_checkpoint(folder, "test_vit"),
    "google/tiny-vit": lambda folder: transformers_checkpoint(folder, "vit"),
    "microsoft/tiny-resnet": lambda folder: transformers_checkpoint(folder, "resnet"),
}


def cache_snapshot(cache: Path, repo_id: str) -> Path:
    """The repo as `hf download` leaves it in HF_HUB_CACHE: models--ORG--NAME/snapshots/<commit>/ and refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    CHECKPOINTS[repo_id](snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An offline Hugging Face cache in tmp_path, seen by huggingface_hub as HF_HUB_CACHE."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("pneumo_hf.models.hub_reachable", lambda: False)
    return cache


def finetune(output: Path, image_folder: Path, source: str, **overrides) -> Path:
    values = dict(model_name_or_path=source, image_size=None, num_train_epochs=1, per_device_train_batch_size=6, learning_rate=0.05, freeze_backbone_epochs=1)
    return tiny_run(output, image_folder, **{**values, **overrides})


def backbone_changes(checkpoint: dict, trained: dict) -> tuple[set, set]:
    """Names of the tensors the two share that differ, and of those whose shape differs (the replaced head)."""
    shared = checkpoint.keys() & trained.keys()
    assert len(shared) == len(checkpoint) == len(trained), "the fine-tuned folder holds the checkpoint's tensors, no more, no less"
    reshaped = {name for name in shared if checkpoint[name].shape != trained[name].shape}
    changed = {name for name in shared - reshaped if not torch.equal(checkpoint[name], trained[name])}
    return changed, reshaped


@pytest.mark.slow
@pytest.mark.parametrize("repo_id, where", [
    ("timm/test_resnet.r160_in1k", "cache"),
    ("timm/test_vit.r160_in1k", "folder"),
    ("google/tiny-vit", "cache"),
    ("microsoft/tiny-resnet", "folder"),
])
def test_a_frozen_backbone_stays_the_checkpoints_bit_for_bit(tmp_path, hub_cache, image_folder, repo_id, where):
    if where == "cache":
        checkpoint_folder, source = cache_snapshot(hub_cache, repo_id), repo_id
    else:  # as `hf download ID --local-dir DIR` leaves it
        checkpoint_folder = tmp_path / "download"
        CHECKPOINTS[repo_id](checkpoint_folder)
        source = str(checkpoint_folder)
    output = finetune(tmp_path / "run", image_folder, source)

    changed, reshaped = backbone_changes(load_file(checkpoint_folder / "model.safetensors"), load_file(output / "model.safetensors"))
    assert changed == set() and reshaped, "only the head is new; every backbone tensor (BatchNorm statistics included) is the checkpoint's"
    assert all(load_file(output / "model.safetensors")[name].shape[0] == len(LABELS) for name in reshaped)
    results = json.loads((output / "all_results.json").read_text())
    assert results["trained_from_scratch"] is False and results["base_model"] == source
    card = ModelCard.load(output / "README.md")
    if where == "cache":
        assert card.data.base_model == repo_id and results["base_model_revision"] == COMMIT
        assert f"fine-tuned from [`{repo_id}`](https://huggingface.co/{repo_id}) at revision `{COMMIT[:12]}`" in card.text
    else:
        assert card.data.base_model is None and "fine-tuned from the checkpoint in the local folder `download`" in card.text
    assert "random initialisation" not in card.text


@pytest.mark.slow
def test_unfrozen_after_the_head_epoch_the_backbone_moves_with_layer_decay(tmp_path, hub_cache, image_folder, caplog):
    checkpoint_folder = cache_snapshot(hub_cache, "timm/test_resnet.r160_in1k")
    with caplog.at_level("INFO", logger="pneumo_hf"):
        output = finetune(tmp_path / "run", image_folder, "timm/test_resnet.r160_in1k", num_train_epochs=2, freeze_backbone_epochs=1, layer_decay=0.75, early_stopping_patience=None)
    # the last epoch's weights, from its resumable checkpoint (the model folder keeps the best epoch, which on these
    # tiny films may be the frozen one)
    last = load_file(sorted((output / "checkpoints").glob("checkpoint_*"))[-1] / "model.safetensors")
    changed, _ = backbone_changes(load_file(checkpoint_folder / "model.safetensors"), {name.removeprefix("backbone."): tensor for name, tensor in last.items()})
    assert any(name.startswith("conv1") for name in changed) and any(name.startswith("layer4") for name in changed)
    assert "Loaded timm weights of test_resnet from timm/test_resnet.r160_in1k (revision 0123456789ab)" in caplog.text
    assert "Epoch 1: the backbone is unfrozen" in caplog.text and "Layer decay 0.75" in caplog.text


@pytest.mark.slow
def test_with_trainable_layers_only_the_top_layers_learn_and_no_norm_statistics_move(tmp_path, hub_cache, image_folder):
    """--trainable_layers 2 on test_resnet: layer4 and the head train; conv1 to layer3 and every running statistic stay."""
    checkpoint_folder = cache_snapshot(hub_cache, "timm/test_resnet.r160_in1k")
    output = finetune(tmp_path / "run", image_folder, "timm/test_resnet.r160_in1k", freeze_backbone_epochs=0, trainable_layers=2, early_stopping_patience=None)
    last = load_file(sorted((output / "checkpoints").glob("checkpoint_*"))[-1] / "model.safetensors")
    changed, reshaped = backbone_changes(load_file(checkpoint_folder / "model.safetensors"), {name.removeprefix("backbone."): tensor for name, tensor in last.items()})
    assert reshaped == {"fc.weight", "fc.bias"}
    assert any(name.startswith("layer4") for name in changed)
    assert all(name.startswith("layer4") and "running" not in name for name in changed)


def test_trainable_layers_on_a_transformers_model_gets_its_sentence(tmp_path, hub_cache, image_folder):
    from pneumo_hf.models import ModelError

    cache_snapshot(hub_cache, "google/tiny-vit")
    with pytest.raises(ModelError, match="no timm layer grouping.*drop --trainable_layers"):
        finetune(tmp_path / "run", image_folder, "google/tiny-vit", freeze_backbone_epochs=0, trainable_layers=2)


def test_layer_decay_gives_the_stem_the_smallest_learning_rate():
    from pneumo_hf.optimization import parameter_groups

    classifier = build_classifier("test_resnet")
    groups = parameter_groups(classifier, layer_decay=0.5, learning_rate=1e-3)
    rate_of = {id(parameter): group["lr"] for group in groups for parameter in group["params"]}
    stem, head = classifier.backbone.conv1[0].weight, classifier.backbone.get_classifier().weight
    assert rate_of[id(head)] == pytest.approx(1e-3) and rate_of[id(stem)] < rate_of[id(head)] * 0.5 ** 2


def test_pretrained_with_a_bare_timm_name_takes_timms_default_tag_from_the_cache(hub_cache):
    snapshot = cache_snapshot(hub_cache, "timm/test_resnet.r160_in1k")
    classifier = build_classifier("test_resnet", pretrained=True)
    assert (classifier.base_model, classifier.base_model_revision, classifier.trained_from_scratch) == ("timm/test_resnet.r160_in1k", COMMIT, False)
    assert torch.equal(classifier.backbone.conv1[0].weight, load_file(snapshot / "model.safetensors")["conv1.0.weight"])
    stored = json.loads((snapshot / "config.json").read_text())["pretrained_cfg"]
    assert classifier.data_config == {key: tuple(stored[key]) if isinstance(stored[key], list) else stored[key] for key in ("input_size", "mean", "std", "interpolation")}


def test_a_transformers_checkpoint_brings_its_preprocessing_and_labels(tmp_path):
    transformers_checkpoint(tmp_path, "resnet")
    classifier = build_classifier(str(tmp_path))
    assert classifier.family == "transformers" and classifier.data_config["input_size"] == (3, 32, 32)
    assert classifier.data_config["interpolation"] == "bicubic"  # ConvNeXt's processor resamples bicubic
    assert [classifier.backbone.config.id2label[i] for i in range(2)] == list(LABELS)
    assert classifier(torch.randn(2, 3, 32, 32)).shape == (2, 2)


def test_an_id_neither_cached_nor_reachable_says_what_to_do_in_one_line(tmp_path, image_folder):
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "train" / "train.py"), "--model_name_or_path", "timm/resnet18.a1_in1k", "--train_dir", str(image_folder), "--output_dir", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert done.returncode == 1 and len(errors) == 1, done.stderr[-2000:]
    assert "'timm/resnet18.a1_in1k' is not in the Hugging Face cache and the Hub is not reachable: run `hf download timm/resnet18.a1_in1k`" in errors[0]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("recipe", sorted((ROOT / "train" / "recipes").glob("*_finetune.json")), ids=lambda path: path.stem)
def test_each_gpu_recipe_parses_and_names_a_real_checkpoint(recipe, tmp_path, monkeypatch):
    from transformers import CONFIG_MAPPING, HfArgumentParser

    monkeypatch.chdir(tmp_path)  # the recipe's output_dir is made relative to here
    (args,) = HfArgumentParser(TrainingArguments).parse_json_file(str(recipe))
    organisation, name = args.model_name_or_path.split("/")
    assert timm.is_model(name) if organisation == "timm" else name.split("-")[0] in CONFIG_MAPPING
    assert (args.mixed_precision, args.image_size, args.dataset_name) == ("bf16", 224, "hf-vision/chest-xray-pneumonia")
    assert args.freeze_backbone_epochs < args.num_train_epochs and not args.pretrained


def test_a_fine_tuned_transformers_cnn_gives_a_heatmap(tmp_path):
    transformers_checkpoint(tmp_path, "resnet")
    prediction = Predictor(build_classifier(str(tmp_path))).predict(xray_like(3, (64, 56)), heatmap=True)
    assert prediction.heatmap.shape == (64, 56) and 0.0 <= prediction.heatmap.min() <= prediction.heatmap.max() <= 1.0
