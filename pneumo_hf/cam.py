"""Heatmaps for PNEUMONIA: the class activation map in the prediction's own forward pass where the maths
allows (a CNN whose head is global average pooling then one linear layer), else Grad-CAM through
pytorch-grad-cam with the target layer and reshape transform each family's adapter names (`pneumo_hf.families`). An ensemble's map is the whole
ensemble's evidence: each member's map in logit units (its CAM, or HiResCAM at a Keras CNN's last ReLU) weighted as
the ensemble averages the members' logits (docs/heatmap.md measures it against the others).

    from pneumo_hf.cam import HeatmapMaker, overlay
    maker = HeatmapMaker(classifier)
    maps, logits = maker(pixel_values, views=("hflip",))   # float32 (batch, H, W) in [0, 1], logits averaged over views
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import scale_cam_image, show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from .labels import LABEL2ID, POSITIVE_LABEL
from .models import PneumoniaClassifier
from .tta import mean_over_views, with_views

__all__ = ["HeatmapMaker", "grad_cam_scaled", "overlay"]

POSITIVE_ID = LABEL2ID[POSITIVE_LABEL]


class HeatmapMaker:
    """Heatmaps for the classifier's PNEUMONIA output; call it on a normalised batch."""

    def __init__(self, classifier: PneumoniaClassifier):
        self.classifier = classifier
        self.family = classifier.adapter  # its members' pooling heads are found once, by their adapters
        self.layers, self.reshape = self.family.cam_layers()
        self._grad_cam_lock = threading.Lock()  # grad-cam's hooks hold per-call state on the shared model

    def __call__(self, pixel_values: torch.Tensor, views: Sequence[str] = ()) -> tuple[np.ndarray, torch.Tensor]:
        """Heatmaps (batch, H, W) in [0, 1] of the images themselves, and their logits averaged over
        the images and their test-time `views`."""
        if self.family.pooling_head is not None:
            return self._class_activation_maps(pixel_values, views)
        if self.family.members:
            return self._ensemble_evidence_maps(pixel_values, views)
        maps, logits = self.grad_cam(pixel_values)
        if views:
            with torch.inference_mode():
                view_logits = self.classifier(with_views(pixel_values, views)[len(pixel_values) :])
            logits = mean_over_views(torch.cat([logits, view_logits]), len(pixel_values))
        return maps, logits

    def _class_activation_maps(self, pixel_values: torch.Tensor, views: Sequence[str]) -> tuple[np.ndarray, torch.Tensor]:
        """One forward pass for the images and their views; the maps come from its last feature map."""
        backbone = self.classifier.backbone
        with torch.inference_mode():
            features = backbone.forward_features(with_views(pixel_values, views))
            logits = mean_over_views(backbone.forward_head(features), len(pixel_values))
            own = features[: len(pixel_values)].float()
            cams = torch.einsum("bkhw,k->bhw", own, self.family.pooling_head.weight[POSITIVE_ID].float()) / (own.shape[-2] * own.shape[-1])
        return grad_cam_scaled(cams.clamp(min=0).cpu().numpy(), pixel_values), logits

    def _ensemble_evidence_maps(self, pixel_values: torch.Tensor, views: Sequence[str]) -> tuple[np.ndarray, torch.Tensor]:
        """The ensemble's forward pass (as `Ensemble.forward`, with the views in the batch) and the whole ensemble's
        evidence for PNEUMONIA (`EnsembleOf.evidence_at`): each member's map in logit units, weighted as the ensemble weighs
        its logits (1 / (members · temperature), nested ensembles likewise), summed at the input's size; then the
        positive part, scaled to [0, 1] per film."""
        count = len(pixel_values)  # no lock: no hooks, and autograd.grad leaves the shared parameters' .grad alone
        logits, evidence = self.family.evidence_at(with_views(pixel_values, views), count, tuple(pixel_values.shape[-2:]))
        return _unit_scaled(evidence.clamp(min=0).numpy()), mean_over_views(logits, count)

    def grad_cam(self, pixel_values: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """pytorch-grad-cam at `target_layers`: heatmaps and the logits of its forward pass."""
        # grad-cam's hooks keep the activations of every forward pass, so they live only for this call
        # (released by hand: its context manager swallows IndexError).
        with self._grad_cam_lock:
            cam = GradCAM(model=self.classifier, target_layers=self.layers, reshape_transform=self.reshape)
            try:
                maps = cam(input_tensor=pixel_values, targets=[ClassifierOutputTarget(POSITIVE_ID)] * len(pixel_values))
                logits = cam.outputs.detach()
            finally:
                cam.activations_and_grads.release()
        return np.clip(np.nan_to_num(maps), 0.0, 1.0).astype(np.float32), logits


def _unit_scaled(maps: np.ndarray) -> np.ndarray:
    """Each map divided by its maximum (0 stays 0): [0, 1] with the strongest evidence at 1."""
    peaks = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(maps, peaks, out=np.zeros_like(maps), where=peaks > 0).astype(np.float32)


def grad_cam_scaled(cams: np.ndarray, pixel_values: torch.Tensor) -> np.ndarray:
    """grad-cam's own post-processing of one layer's maps: min-max per map, resized to the input, then again."""
    size = (pixel_values.shape[-1], pixel_values.shape[-2])
    maps = np.maximum(scale_cam_image(cams, size), 0)
    return np.clip(np.nan_to_num(scale_cam_image(maps)), 0.0, 1.0).astype(np.float32)


def overlay(image: Image.Image, heatmap: np.ndarray, image_weight: float = 0.6) -> Image.Image:
    """The heatmap (same size as `image`) blended over the image with a jet colour map."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return Image.fromarray(show_cam_on_image(rgb, heatmap, use_rgb=True, image_weight=image_weight))
