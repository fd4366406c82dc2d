"""Test-time augmentation: average the logits of a few deterministic views of each image, all in one batch.

    python train/evaluate.py --model runs/b0 --validation_split --tta hflip zoom
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["VIEWS", "with_views", "mean_over_views", "logits_with_views"]


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


def with_views(pixel_values: torch.Tensor, views: Sequence[str] = ()) -> torch.Tensor:
    """The batch followed by each named view of it: (1 + len(views)) * batch images, for one forward pass."""
    unknown = [view for view in views if view not in VIEWS]
    if unknown:
        raise ValueError(f"Unknown test-time views {unknown}; choose from {sorted(VIEWS)}.")
    return torch.cat([pixel_values, *(VIEWS[view](pixel_values) for view in views)]) if views else pixel_values


def mean_over_views(logits: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The logits of a `with_views` batch averaged back to one row per image."""
    return logits.float().reshape(-1, batch_size, logits.shape[-1]).mean(dim=0)


def logits_with_views(model: torch.nn.Module, pixel_values: torch.Tensor, views: Sequence[str] = ()) -> torch.Tensor:
    """Mean logits over the image itself and each named view in `VIEWS`, in one forward pass."""
    return mean_over_views(model(with_views(pixel_values, views)), len(pixel_values))
