"""The training augmentation, defined once (`Augmentation`) and drawn two ways: film by film with torchvision in
`pneumo_hf.transforms.build_transform(train=True)` (`--no_film_cache`), and on whole uint8 batches with kornia in
`BatchAugment` (over the film cache, the default). Same distributions, the same constants.

    augment = BatchAugment(classifier.data_config, aug_strength=1.0, intensity_aug=0.5, random_erasing=0.25)
    pixel_values = augment(batch["pixel_values"])      # (B, 1, H, W) uint8 films → (B, 3, H, W) normalised
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

__all__ = ["Augmentation", "BatchAugment"]


@dataclass(frozen=True)
class Augmentation:
    """Radiograph-safe augmentation scaled by `aug_strength` (rotation, shift, scale, brightness, contrast); intensity
    augmentation scaled by `intensity_aug` (gamma in exp(±0.4·s) for half the films, a Gaussian blur of σ up to s pixels
    and Gaussian noise of σ 0.03·s for a third each: other exposures, detectors and sharpness); and with probability
    `random_erasing` a rectangle of noise (timm's `--reprob` with `--remode pixel`). 0 turns each off."""

    aug_strength: float = 1.0
    intensity_aug: float = 0.0
    random_erasing: float = 0.0

    @property
    def geometric(self) -> Optional[dict[str, Any]]:
        s = self.aug_strength
        if s <= 0:
            return None
        return {"degrees": 10 * s, "translate": (0.06 * s, 0.06 * s), "scale": (1 - 0.1 * s, 1 + 0.1 * s), "brightness": 0.2 * s, "contrast": 0.2 * s}

    @property
    def intensity(self) -> Optional[dict[str, Any]]:
        s = self.intensity_aug
        if s <= 0:
            return None
        return {
            "gamma": (math.exp(-0.4 * s), math.exp(0.4 * s)), "gamma_p": 0.5,
            "blur_kernel": 5, "blur_sigma": (0.1, max(0.1, s)), "blur_p": 1 / 3,
            "noise_std": 0.03 * s, "noise_p": 1 / 3,
        }


class BatchAugment(nn.Module):
    """`Augmentation` drawn per film on a whole uint8 batch (B, 1, H, W) with kornia, then three channels, normalised."""

    def __init__(self, data_config: dict[str, Any], aug_strength: float = 1.0, intensity_aug: float = 0.0, random_erasing: float = 0.0):
        super().__init__()
        import kornia.augmentation as K

        spec = Augmentation(aug_strength, intensity_aug, random_erasing)
        geometric, noise = [], []
        if spec.geometric:
            g = spec.geometric
            geometric += [K.RandomAffine(degrees=g["degrees"], translate=g["translate"], scale=g["scale"], p=1.0), K.ColorJitter(brightness=g["brightness"], contrast=g["contrast"], p=1.0)]
        if spec.intensity:
            i = spec.intensity
            geometric += [K.RandomGamma(gamma=i["gamma"], p=i["gamma_p"]), K.RandomGaussianBlur(kernel_size=i["blur_kernel"], sigma=i["blur_sigma"], p=i["blur_p"])]
            noise.append(K.RandomGaussianNoise(std=i["noise_std"], p=i["noise_p"]))
        self.geometric = K.AugmentationSequential(*geometric) if geometric else None
        self.noise = K.AugmentationSequential(*noise) if noise else None
        self.erasing = K.RandomErasing(p=random_erasing, value=0.0) if random_erasing > 0 else None
        from .transforms import normalise  # not at the top: transforms imports this module's Augmentation

        self.normalise = normalise
        self.register_buffer("mean", torch.tensor(data_config["mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(data_config["std"]).view(1, -1, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, films: torch.Tensor) -> torch.Tensor:
        x = films.float() / 255.0
        if self.geometric is not None:
            x = self.geometric(x).clamp(0.0, 1.0)
        if self.noise is not None:
            x = self.noise(x)
        x = self.normalise(x.expand(-1, 3, -1, -1), self.mean, self.std)  # buffers: on the device with the module
        if self.erasing is not None:  # timm's --remode pixel: the erased rectangle holds normal noise
            erased = self.erasing(torch.ones_like(x[:, :1])) == 0
            x = torch.where(erased, torch.randn_like(x), x)
        return x
