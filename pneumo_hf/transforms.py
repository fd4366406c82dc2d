"""The one preprocessing definition, used by training, evaluation, inference and the heatmaps (torchvision only,
so that prediction needs neither `datasets` nor scikit-learn).

    from pneumo_hf.transforms import build_transform
    pixel_values = build_transform(classifier.data_config)(image)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2

from .augmentation import Augmentation

__all__ = ["RandomGamma", "build_transform", "denormalise", "normalise"]


def normalise(films: torch.Tensor, mean, std) -> torch.Tensor:
    """The model's input from 3-channel films in [0, 1] (channels third from last): (x − mean) / std per channel, as
    `build_transform` ends; `mean` and `std` as a data_config gives them (or tensors). The one normalisation:
    batch augmentation, the film cache, the ensemble's members and the films' negatives all go through it."""
    return (films - _channels(mean, films)) / _channels(std, films)


def denormalise(pixel_values: torch.Tensor, mean, std) -> torch.Tensor:
    """The films in [0, 1] behind a normalised batch (`normalise` undone)."""
    return pixel_values * _channels(std, pixel_values) + _channels(mean, pixel_values)


def _channels(values, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1)


class RandomGamma(v2.Transform):
    """Gamma drawn log-uniformly from `gamma_range` for each image (another exposure or film response),
    through torchvision's `adjust_gamma`; torchvision has no random version."""

    def __init__(self, gamma_range: tuple[float, float]):
        super().__init__()
        self.log_range = (math.log(gamma_range[0]), math.log(gamma_range[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"gamma": math.exp(torch.empty(1).uniform_(*self.log_range).item())}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return v2.functional.adjust_gamma(inpt, params["gamma"])


def build_transform(data_config: dict[str, Any], train: bool = False, aug_strength: float = 1.0, random_erasing: float = 0.0, intensity_aug: float = 0.0) -> v2.Compose:
    """The one preprocessing used by training, evaluation, inference and Grad-CAM.

    Grey → 3 channels, resize to the model's input size (aspect not kept, as in the training data),
    normalise with the model's mean/std. With `train`, the training augmentation (`pneumo_hf.augmentation.Augmentation`,
    drawn film by film) of the given strengths."""
    height, width = data_config["input_size"][-2:]
    interpolation = InterpolationMode(data_config.get("interpolation", "bilinear"))
    steps: list[Any] = [v2.ToImage(), v2.Grayscale(num_output_channels=3), v2.Resize((height, width), interpolation=interpolation, antialias=True)]
    spec = Augmentation(aug_strength, intensity_aug, random_erasing) if train else Augmentation(0.0)
    if spec.geometric:
        g = spec.geometric
        steps += [
            v2.RandomAffine(degrees=g["degrees"], translate=g["translate"], scale=g["scale"], interpolation=InterpolationMode.BILINEAR),
            v2.ColorJitter(brightness=g["brightness"], contrast=g["contrast"]),
        ]
    if spec.intensity:
        i = spec.intensity
        steps += [
            v2.RandomApply([RandomGamma(i["gamma"])], p=i["gamma_p"]),
            v2.RandomApply([v2.GaussianBlur(kernel_size=i["blur_kernel"], sigma=i["blur_sigma"])], p=i["blur_p"]),
        ]
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if spec.intensity:
        steps.append(v2.RandomApply([v2.GaussianNoise(sigma=spec.intensity["noise_std"])], p=spec.intensity["noise_p"]))
    steps.append(v2.Normalize(mean=list(data_config["mean"]), std=list(data_config["std"])))
    if spec.random_erasing > 0:
        steps.append(v2.RandomErasing(p=spec.random_erasing, value="random"))
    return v2.Compose(steps)
