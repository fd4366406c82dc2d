"""Batch norms folded into their convolutions for inference: the same outputs, and no fold where it would change them."""

import numpy as np
import pytest
import timm
import torch
from torch import nn

from pneumo_hf.domain import FEATURES, DomainCheck
from pneumo_hf.folding import fold_batch_norms
from pneumo_hf.inference import DEFAULT_MODEL_DIR, Predictor, load_predictor
from pneumo_hf.models import PneumoniaClassifier


def with_random_statistics(model: nn.Module) -> nn.Module:
    """Running statistics and affine parameters unlike the identity, so that a wrong fold shows."""
    generator = torch.Generator().manual_seed(0)
    for norm in model.modules():
        if isinstance(norm, nn.BatchNorm2d):
            shape = norm.running_mean.shape
            norm.running_mean.copy_(torch.randn(shape, generator=generator))
            norm.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)
            norm.weight.data.copy_(torch.randn(shape, generator=generator))
            norm.bias.data.copy_(torch.randn(shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "resnet18"])
def test_every_norm_of_a_timm_cnn_folds_and_the_output_stays(name):
    model = with_random_statistics(timm.create_model(name, num_classes=2))
    norms = sum(isinstance(module, nn.BatchNorm2d) for module in model.modules())
    films = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        before = model(films)
    assert fold_batch_norms(model, films[:1]) == norms > 0
    assert not any(isinstance(module, nn.BatchNorm2d) for module in model.modules())
    with torch.inference_mode():
        assert torch.allclose(model(films), before, atol=1e-4 * before.abs().max().item())


class ConvFeedsTwoPlaces(nn.Module):
    """The convolution's output goes to its norm and, unnormalised, around it: folding would change the sum."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)

    def forward(self, x):
        features = self.conv(x)
        return self.norm(features) + features


class NormBeforeConv(nn.Module):
    """Declared conv then norm, run the other way round: the norm never sees the convolution's output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)
        self.norm = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.conv(self.norm(x))


@pytest.mark.parametrize("model_class", [ConvFeedsTwoPlaces, NormBeforeConv])
def test_a_norm_that_does_not_only_normalise_its_convolution_is_left(model_class, caplog):
    model = with_random_statistics(model_class())
    films = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    conv, norm = model.conv, model.norm
    with torch.inference_mode():
        before = model(films)
    assert fold_batch_norms(model, films[:1]) == 0
    assert model.conv is conv and model.norm is norm
    assert ("changed its output" in caplog.text) == (model_class is ConvFeedsTwoPlaces)  # folded, compared, undone
    with torch.inference_mode():
        assert torch.equal(model(films), before)


def test_a_model_in_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(timm.create_model("resnet18", num_classes=2).train(), torch.zeros(1, 3, 32, 32))


def test_the_shipped_model_predicts_the_same_folded():
    """load_predictor folds its CNNs' norms; the classifier as loaded, unfolded, gives the same probabilities."""
    predictor = load_predictor()
    unfolded = PneumoniaClassifier.from_pretrained(DEFAULT_MODEL_DIR).eval()
    assert not any(isinstance(module, nn.BatchNorm2d) for module in predictor.classifier.modules())
    assert any(isinstance(module, nn.BatchNorm2d) for module in unfolded.modules())
    pixels = torch.rand(2, *unfolded.data_config["input_size"], generator=torch.Generator().manual_seed(3)) * 2 - 1
    folded_probabilities, _ = predictor.probabilities(pixels)
    with torch.inference_mode():
        expected = torch.softmax(unfolded(pixels) / unfolded.temperature, dim=1).numpy()
    assert abs(folded_probabilities - expected).max() < 1e-5


def test_a_callers_own_classifier_is_not_folded():
    classifier = PneumoniaClassifier.from_pretrained(DEFAULT_MODEL_DIR)
    norms = [module for module in classifier.modules() if isinstance(module, nn.BatchNorm2d)]
    predictor = Predictor(classifier, folder=DEFAULT_MODEL_DIR)
    assert predictor.classifier is classifier and [module for module in classifier.modules() if isinstance(module, nn.BatchNorm2d)] == norms


def test_a_first_convolution_domain_check_reads_the_convolution_unfolded(trained_folder):
    """A features check measures the first convolution's own output: the predictor folds its norm after the check took it."""
    predictor = load_predictor(trained_folder)
    assert predictor.domain.kind == FEATURES
    assert not any(isinstance(module, nn.BatchNorm2d) for module in predictor.classifier.modules())
    check = DomainCheck.load(trained_folder, PneumoniaClassifier.from_pretrained(trained_folder).eval())
    pixels = torch.rand(4, *predictor.classifier.data_config["input_size"], generator=torch.Generator().manual_seed(4)) * 2 - 1
    assert np.allclose(predictor.domain.distances(pixels), check.distances(pixels), rtol=1e-5)
