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

__all__ = ["RandomGamma", "build_transform"]


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
    normalise with the model's mean/std. Training adds radiograph-safe augmentation scaled by `aug_strength`;
    intensity augmentation scaled by `intensity_aug` (gamma in exp(±0.4·s) for half the films, a Gaussian blur of
    σ up to s pixels and Gaussian noise of σ 0.03·s for a third each: other exposures, detectors and sharpness);
    and with probability `random_erasing` a rectangle of noise (random erasing, as timm's `--reprob` with `--remode pixel`)."""
    height, width = data_config["input_size"][-2:]
    interpolation = InterpolationMode(data_config.get("interpolation", "bilinear"))
    steps: list[Any] = [v2.ToImage(), v2.Grayscale(num_output_channels=3), v2.Resize((height, width), interpolation=interpolation, antialias=True)]
    if train and aug_strength > 0:
        s = aug_strength
        steps += [
            v2.RandomAffine(degrees=10 * s, translate=(0.06 * s, 0.06 * s), scale=(1 - 0.1 * s, 1 + 0.1 * s), interpolation=InterpolationMode.BILINEAR),
            v2.ColorJitter(brightness=0.2 * s, contrast=0.2 * s),
        ]
    if train and intensity_aug > 0:
        s = intensity_aug
        steps += [
            v2.RandomApply([RandomGamma((math.exp(-0.4 * s), math.exp(0.4 * s)))], p=0.5),
            v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, max(0.1, s)))], p=1 / 3),
        ]
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if train and intensity_aug > 0:
        steps.append(v2.RandomApply([v2.GaussianNoise(sigma=0.03 * intensity_aug)], p=1 / 3))
    steps.append(v2.Normalize(mean=list(data_config["mean"]), std=list(data_config["std"])))
    if train and random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing, value="random"))
    return v2.Compose(steps)
