"""Grad-CAM through pytorch-grad-cam, with the target layer and reshape transform chosen per model family.

    from pneumo_hf.cam import HeatmapMaker, overlay
    maker = HeatmapMaker(classifier)
    maps, logits = maker(pixel_values)               # float32 (batch, H, W) in [0, 1] for PNEUMONIA, and the logits
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from .labels import LABEL2ID, POSITIVE_LABEL
from .models import PneumoniaClassifier

__all__ = ["target_layers", "HeatmapMaker", "overlay"]

ReshapeTransform = Optional[Callable[[torch.Tensor], torch.Tensor]]


def target_layers(classifier: PneumoniaClassifier) -> tuple[list[nn.Module], ReshapeTransform]:
    """The layer Grad-CAM reads for each family, and for transformers the token → grid reshape."""
    backbone = classifier.backbone
    if classifier.family == "transformers":
        config = backbone.config
        base = getattr(backbone, config.model_type)
        layers = base.layers if hasattr(base, "layers") else base.encoder.layer  # transformers 5 / 4 layout
        grid = config.image_size // config.patch_size
        return [layers[-1].layernorm_before], _tokens_to_grid(grid, grid, prefix_tokens=1)
    if hasattr(backbone, "blocks") and hasattr(backbone, "patch_embed"):  # timm ViT / DeiT
        grid_h, grid_w = backbone.patch_embed.grid_size
        return [backbone.blocks[-1].norm1], _tokens_to_grid(grid_h, grid_w, getattr(backbone, "num_prefix_tokens", 1))
    if hasattr(backbone, "layer4"):  # timm ResNet family
        return [backbone.layer4[-1]], None
    if hasattr(backbone, "conv_head"):  # timm EfficientNet / MobileNet
        return [backbone.conv_head], None
    last_stage = backbone.feature_info[-1]["module"]  # any other timm CNN: its last feature stage
    return [backbone.get_submodule(last_stage)], None


def _tokens_to_grid(height: int, width: int, prefix_tokens: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        grid = tokens[:, prefix_tokens:, :].reshape(tokens.size(0), height, width, tokens.size(2))
        return grid.permute(0, 3, 1, 2)

    return reshape


class HeatmapMaker:
    """Grad-CAM for the classifier's PNEUMONIA output; call it on a normalised batch."""

    def __init__(self, classifier: PneumoniaClassifier):
        self.classifier = classifier
        self.layers, self.reshape = target_layers(classifier)
        self.target = ClassifierOutputTarget(LABEL2ID[POSITIVE_LABEL])

    def __call__(self, pixel_values: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """Heatmaps (batch, H, W) in [0, 1], and the logits of the same forward pass."""
        # grad-cam's hooks keep the activations of every forward pass, so they live only for this call
        # (released by hand: its context manager swallows IndexError).
        cam = GradCAM(model=self.classifier, target_layers=self.layers, reshape_transform=self.reshape)
        try:
            maps = cam(input_tensor=pixel_values, targets=[self.target] * len(pixel_values))
            logits = cam.outputs.detach()
        finally:
            cam.activations_and_grads.release()
        return np.clip(np.nan_to_num(maps), 0.0, 1.0).astype(np.float32), logits


def overlay(image: Image.Image, heatmap: np.ndarray, image_weight: float = 0.6) -> Image.Image:
    """The heatmap (same size as `image`) blended over the image with a jet colour map."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return Image.fromarray(show_cam_on_image(rgb, heatmap, use_rgb=True, image_weight=image_weight))
