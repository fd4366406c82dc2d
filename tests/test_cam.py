"""Heatmaps for each family: the right shape, the [0, 1] range, at the input's size; the one-pass class
activation map of the CNNs equals pytorch-grad-cam's Grad-CAM."""

import numpy as np
import pytest
import torch
from conftest import TINY_VIT, xray_like

from pneumo_hf.cam import HeatmapMaker, overlay
from pneumo_hf.inference import DEFAULT_MODEL_DIR, Predictor
from pneumo_hf.models import PneumoniaClassifier, build_classifier
from pneumo_hf.tta import logits_with_views

FAMILIES = [
    ("resnet18", {}),
    ("efficientnet_b0", {}),
    ("vit_tiny_patch16_224", {}),
    ("vit", {"config_overrides": TINY_VIT}),
]


@pytest.mark.parametrize("name, kwargs", FAMILIES)
def test_heatmap_shape_and_range_for_each_family(name, kwargs):
    torch.manual_seed(0)  # seeded weights and films whose maps hold some evidence
    model = build_classifier(name, image_size=64, **kwargs).eval()
    pixel_values = torch.randn(3, 3, 64, 64)
    maps, logits = HeatmapMaker(model)(pixel_values)
    with torch.no_grad():
        assert torch.allclose(logits, model(pixel_values), atol=1e-5)
    assert maps.shape == (3, 64, 64) and maps.dtype == np.float32
    assert not np.allclose(maps[0], maps[1], atol=1e-3)  # another film, another map: it reads the film


@pytest.mark.parametrize("name, kwargs", FAMILIES[::3])
def test_prediction_heatmap_has_the_input_size(name, kwargs):
    predictor = Predictor(build_classifier(name, image_size=64, **kwargs))
    image = xray_like(0, (150, 110), pneumonia=True)
    prediction = predictor.predict(image, heatmap=True)
    assert prediction.heatmap.shape == (150, 110)
    assert 0.0 <= prediction.heatmap.min() and prediction.heatmap.max() <= 1.0
    blended = overlay(prediction.image, prediction.heatmap)
    assert blended.size == (110, 150) and blended.mode == "RGB"


def test_heatmap_hooks_do_not_outlive_the_call():
    """grad-cam's hooks keep every forward pass's activations; after a heatmap, plain predictions must not feed them."""
    predictor = Predictor(build_classifier("resnet18", image_size=64))
    image = xray_like(1, (80, 80), pneumonia=False)
    first = predictor.predict(image, heatmap=True)
    assert not any(module._forward_hooks or module._backward_hooks for module in predictor.classifier.modules())
    predictor.predict(image)
    again = predictor.predict(image, heatmap=True)
    assert np.array_equal(first.heatmap, again.heatmap) and first.probabilities == again.probabilities


def _random_head(name: str) -> PneumoniaClassifier:
    torch.manual_seed(0)
    model = build_classifier(name, image_size=128).eval()
    torch.nn.init.uniform_(model.backbone.get_classifier().weight)  # timm may zero-init the head, and a map all below zero is blank: neither proves anything
    return model


def _shipped_b0_member() -> PneumoniaClassifier:
    """The trained EfficientNet-B0 inside the shipped ensemble, on its own."""
    ensemble = PneumoniaClassifier.from_pretrained(DEFAULT_MODEL_DIR).backbone
    spec = ensemble.specs[0]
    return PneumoniaClassifier(ensemble.members[0], {key: spec[key] for key in ("input_size", "mean", "std")}).eval()


@pytest.mark.parametrize("model", [lambda: _random_head("resnet18"), lambda: _random_head("resnet50"), lambda: _random_head("efficientnet_b0"), _shipped_b0_member], ids=["resnet18", "resnet50", "efficientnet_b0", "shipped_b0_member"])
def test_one_pass_heatmap_equals_grad_cam_for_cnns(model):
    model = model()
    maker = HeatmapMaker(model)
    assert maker.family.pooling_head is not None  # the class activation map path, no backward pass
    size = model.data_config["input_size"][-1]
    pixel_values = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    maps, logits = maker(pixel_values)
    reference, reference_logits = maker.grad_cam(pixel_values)
    assert reference.max() > 0.5  # real maps, not all zero
    assert np.abs(maps - reference).max() < 1e-5
    assert torch.allclose(logits, reference_logits, atol=1e-5)


def test_one_pass_heatmap_sends_the_views_through_in_the_same_batch():
    model = _random_head("efficientnet_b0")
    pixel_values = torch.randn(2, 3, 128, 128)
    _, logits = HeatmapMaker(model)(pixel_values, views=("hflip", "zoom"))
    with torch.inference_mode():
        assert torch.allclose(logits, logits_with_views(model, pixel_values, ("hflip", "zoom")), atol=1e-5)


@pytest.mark.parametrize("name, kwargs", [*FAMILIES[2:], ("keras_cnn", {})])
def test_transformers_and_dense_heads_keep_grad_cam(name, kwargs):
    assert HeatmapMaker(build_classifier(name, image_size=64, **kwargs)).family.pooling_head is None


@pytest.mark.parametrize("name", ["keras_cnn", "keras_cnn_wide"])
def test_keras_cnn_heatmap_reads_its_last_block(name):
    model = build_classifier(name, image_size=64).eval()
    maker = HeatmapMaker(model)
    assert maker.layers == [model.backbone.blocks[2]]
    maps, logits = maker(torch.randn(2, 3, 64, 64))
    assert maps.shape == (2, 64, 64) and logits.shape == (2, 2)
