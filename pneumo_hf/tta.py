"""Test-time augmentation: average the logits of a few deterministic views of each image.

    python train/evaluate.py --model runs/b0 --validation_split --tta hflip zoom
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["VIEWS", "logits_with_views"]


def _zoom(pixel_values: torch.Tensor, factor: float = 1.1) -> torch.Tensor:
    """Centre crop of 1/factor of each side, resized back: within the training augmentation's scale range."""
    height, width = pixel_values.shape[-2:]
    crop_h, crop_w = round(height / factor), round(width / factor)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    crop = pixel_values[..., top : top + crop_h, left : left + crop_w]
    return F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "hflip": lambda pixel_values: torch.flip(pixel_values, dims=[-1]),  # never seen in training: the heart sits left
    "zoom": _zoom,
}


def logits_with_views(model: torch.nn.Module, pixel_values: torch.Tensor, views: Sequence[str] = (), logits: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean logits over the image itself and each named view in `VIEWS`; pass `logits` when the
    image's own pass is already done (Grad-CAM does one)."""
    unknown = [view for view in views if view not in VIEWS]
    if unknown:
        raise ValueError(f"Unknown test-time views {unknown}; choose from {sorted(VIEWS)}.")
    logits = model(pixel_values).float() if logits is None else logits.float()
    for view in views:
        logits = logits + model(VIEWS[view](pixel_values)).float()
    return logits / (1 + len(views))
