"""Grad-CAM for each family: the right shape, the [0, 1] range, at the input's size."""

import numpy as np
import pytest
import torch

from conftest import TINY_VIT, xray_like
from pneumo_hf.cam import HeatmapMaker, overlay
from pneumo_hf.inference import Predictor
from pneumo_hf.models import build_classifier

FAMILIES = [
    ("resnet18", {}),
    ("efficientnet_b0", {}),
    ("vit_tiny_patch16_224", {}),
    ("vit", {"config_overrides": TINY_VIT}),
]


@pytest.mark.parametrize("name, kwargs", FAMILIES)
def test_heatmap_shape_and_range_for_each_family(name, kwargs):
    model = build_classifier(name, image_size=64, **kwargs).eval()
    pixel_values = torch.randn(3, 3, 64, 64)
    maps, logits = HeatmapMaker(model)(pixel_values)
    with torch.no_grad():
        assert torch.allclose(logits, model(pixel_values), atol=1e-5)
    assert maps.shape == (3, 64, 64) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0  # an untrained model may give an all-zero map


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
