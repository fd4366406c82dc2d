"""Building every family, the model folder round trip, and loading it with plain timm and transformers."""

import json

import pytest
import timm
import torch
from conftest import TINY_VIT

from pneumo_hf.labels import LABELS
from pneumo_hf.models import ModelError, PneumoniaClassifier, build_classifier


def test_unknown_model_name_suggests_timm_names():
    with pytest.raises(ModelError, match="Unknown model 'resnet5o'"):
        build_classifier("resnet5o")


def test_pretrained_weights_neither_cached_nor_reachable_say_how_to_get_them(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("pneumo_hf.models.hub_reachable", lambda: False)
    with pytest.raises(ModelError, match="run `hf download timm/resnet18.a1_in1k`"):
        build_classifier("resnet18", pretrained=True)
    with pytest.raises(ModelError, match="timm has no pretrained weights on the Hub for 'keras_cnn'"):
        build_classifier("keras_cnn", pretrained=True)


@pytest.mark.parametrize("name, kwargs", [
    ("resnet18", {"image_size": 32}),
    ("vit_tiny_patch16_224", {"image_size": 32}),
    ("vit", {"image_size": 32, "config_overrides": TINY_VIT}),
    ("keras_cnn", {"image_size": 32}),
    ("keras_cnn_wide", {"image_size": 32}),
])
def test_save_load_round_trip_keeps_labels_threshold_and_outputs(tmp_path, name, kwargs):
    model = build_classifier(name, **kwargs).eval()
    model.threshold, model.temperature = 0.37, 1.8
    model.save_pretrained(tmp_path)
    loaded = PneumoniaClassifier.from_pretrained(tmp_path).eval()
    config = json.loads((tmp_path / "config.json").read_text())
    names = config["label_names"] if "label_names" in config else [config["id2label"][str(i)] for i in range(2)]
    assert tuple(names) == LABELS
    assert (loaded.threshold, loaded.temperature, loaded.family) == (0.37, 1.8, model.family)
    assert loaded.data_config["input_size"][-2:] == (32, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-5)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))


def test_keras_notebook_cnn_builds_by_name_as_three_blocks_then_dense():
    model = build_classifier("keras_cnn", image_size=150).backbone
    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convolutions] == [32, 64, 128] and all(c.kernel_size == (3, 3) for c in convolutions)
    assert model.num_features == 128 * 17 * 17 and model.get_classifier().in_features == 128  # 150 → 74 → 36 → 17
    assert timm.data.resolve_model_data_config(model)["mean"] == (0.0, 0.0, 0.0)  # Keras' rescale=1/255
    with pytest.raises(ValueError, match="too small"):
        build_classifier("keras_cnn", image_size=16)


def test_wide_keras_cnn_doubles_every_block():
    model = build_classifier("keras_cnn_wide", image_size=150).backbone
    assert [c.out_channels for c in model.modules() if isinstance(c, torch.nn.Conv2d)] == [64, 128, 256]
    assert model.num_features == 256 * 17 * 17 and model.get_classifier().in_features == 128


@pytest.mark.parametrize("architecture, registered", [("keras_cnn", "keras_cnn"), ("keras_cnn_wide", "keras_cnn_wide"), ("resnet18", None)])
def test_model_card_names_what_pneumo_hf_registers_with_timm(architecture, registered):
    from pneumo_hf.card import _plain_loading

    text = _plain_loading("timm", architecture)
    assert (f"registers `{registered}` with timm" in text) if registered else ("import pneumo_hf" not in text and "TimmWrapper" in text)


def test_half_storage_matches_full_precision(tmp_path):
    model = build_classifier("resnet18", image_size=32).eval()
    model.save_pretrained(tmp_path, half=True)
    loaded = PneumoniaClassifier.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(torch.softmax(model(x), 1), torch.softmax(loaded(x), 1), atol=1e-3)


def test_timm_folder_loads_with_plain_timm_and_transformers(tmp_path):
    from transformers import TimmWrapperForImageClassification

    model = build_classifier("resnet18", image_size=32).eval()
    model.save_pretrained(tmp_path)
    x = torch.randn(1, 3, 32, 32)
    plain_timm = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    wrapped = TimmWrapperForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = model(x)
        assert torch.allclose(plain_timm(x), expected, atol=1e-5)
        assert torch.allclose(wrapped(pixel_values=x).logits, expected, atol=1e-5)
    assert [wrapped.config.id2label[i] for i in range(2)] == list(LABELS)


def test_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        PneumoniaClassifier.from_pretrained(tmp_path)
