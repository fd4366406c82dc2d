"""Test-time augmentation: the views and the averaging of their logits."""

import pytest
import torch
from conftest import xray_like

from pneumo_hf import load_predictor
from pneumo_hf.imaging import load_image
from pneumo_hf.models import build_classifier
from pneumo_hf.tta import VIEWS, logits_with_views


class LeftHalfSum(torch.nn.Module):
    """A 'model' whose one logit is the sum of the left half of the image: hflip sees the right half."""

    def forward(self, pixel_values):
        return pixel_values[..., : pixel_values.shape[-1] // 2].sum(dim=(1, 2, 3)).unsqueeze(1)


def test_no_views_is_the_plain_forward_pass():
    pixel_values = torch.randn(2, 3, 16, 16)
    assert torch.equal(logits_with_views(LeftHalfSum(), pixel_values), LeftHalfSum()(pixel_values))


def test_hflip_averages_the_image_and_its_mirror():
    pixel_values = torch.zeros(1, 3, 8, 8)
    pixel_values[..., :4] = 1.0  # left half ones, right half zeros
    assert logits_with_views(LeftHalfSum(), pixel_values, ["hflip"]).item() == pytest.approx((3 * 8 * 4 + 0) / 2)


def test_zoom_keeps_the_shape_and_crops_the_border():
    pixel_values = torch.zeros(1, 3, 40, 40)
    pixel_values[..., 0, :] = 1.0  # a bright top row, cropped away by the zoom
    zoomed = VIEWS["zoom"](pixel_values)
    assert zoomed.shape == pixel_values.shape and zoomed.max() == 0.0


def test_unknown_view_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown test-time views"):
        logits_with_views(LeftHalfSum(), torch.zeros(1, 3, 8, 8), ["rotate"])


def test_predictor_applies_the_stored_views_with_and_without_heatmap(tmp_path):
    torch.manual_seed(0)
    classifier = build_classifier("resnet18", image_size=32)
    classifier.test_time_views = ("hflip", "zoom")
    classifier.save_pretrained(tmp_path)
    predictor = load_predictor(tmp_path)
    assert predictor.classifier.test_time_views == ("hflip", "zoom")
    image = xray_like(3)
    pixel_values = predictor.transform(load_image(image)).unsqueeze(0)
    with torch.inference_mode():
        expected = torch.softmax(logits_with_views(predictor.classifier, pixel_values, ["hflip", "zoom"]), dim=1)[0, 1].item()
        plain = torch.softmax(predictor.classifier(pixel_values), dim=1)[0, 1].item()
    assert expected != pytest.approx(plain, abs=1e-6)
    assert predictor.predict(image).probabilities["PNEUMONIA"] == pytest.approx(expected, abs=1e-5)
    assert predictor.predict(image, heatmap=True).probabilities["PNEUMONIA"] == pytest.approx(expected, abs=1e-5)
